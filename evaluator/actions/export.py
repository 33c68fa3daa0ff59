"""The best checkpoints kept where training's `max_to_keep` cannot delete them, and exported.

The best `keep` rows by the chosen metric (in the metric's direction, ties to the lowest step: what
`report --best` names) are decided from the database, every worker's rows, and written by one
worker at a time (the store's lock on EXPORT_DIR). Their files go to EXPORT_DIR (default
MODEL_DIR/export/best): hard links when on the same file system, else copies, each written under a
temporary name and renamed, with a `checkpoint` state file of its own naming the best, so
`tf.train.latest_checkpoint(EXPORT_DIR)` finds it. A checkpoint this worker evaluated is placed from
descriptors opened before the evaluation, so one that training deleted meanwhile is still kept;
another worker's is placed from the model directory while it is there, else by that worker.

Optionally a SavedModel (`savedmodel/<step>/`) or a frozen GraphDef (`frozen/<step>.pb`) of the
weights that were evaluated (the averages) is written beside it, also atomically, by the worker that
has them loaded; one whose worker stopped first is written at the next start, restored from the
kept files. `best.json` lists what is kept, each export's state ("written", "pending" while the
worker that evaluated it has not yet written it, "failed: ...") and the best rows whose files were
gone before they could be kept.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from evaluator import checkpoints
from evaluator.actions import Recorded, Shared
from evaluator.errors import first_line
from evaluator.evaluation import MIN, Evaluation, Ranking, Status

MANIFEST = "best.json"
FORMATS = ("checkpoint", "savedmodel", "frozen")
WRITTEN, PENDING = "written", "pending"


@dataclass(frozen=True)
class Kept:
    """One kept checkpoint."""

    checkpoint: str
    step: int | None
    value: float
    files: list[str]
    #: Export format -> WRITTEN, PENDING or "failed: why".
    exports: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """What best.json says is kept."""

    metric: str | None = None
    goal: str | None = None
    kept: list[Kept] = field(default_factory=list)
    #: The best rows whose files were gone before they could be kept: {checkpoint, step, value}.
    unavailable: list[dict[str, Any]] = field(default_factory=list)


class BestExport:
    """Keeps the best `keep` checkpoints by `metric` in `directory` (and exports them in `formats`)."""

    name = "export"

    def __init__(self, directory: str, model_dir: str, metric: str | None, keep: int, formats: tuple[str, ...],
                 log: Any, shared: Shared, evaluation: str, model: Any = None) -> None:
        self.directory = directory
        self.model_dir = model_dir
        self.metric = metric
        self.keep = keep
        self.formats = formats
        self.log = log
        self.shared = shared
        #: The evaluation's name (--name): the rows ranked are this model directory's under it.
        self.evaluation = evaluation
        #: The evaluation model: for exports restored from the kept files at start.
        self.model = model
        manifest = _load(directory)
        self.goal: str | None = manifest.goal
        self.kept: list[Kept] = manifest.kept
        #: A decision failed (the database away): the next batch decides, whatever it holds.
        self._stale = False

    # -- the action -------------------------------------------------------------------------------

    def catch_up(self, rows: Iterable[Evaluation]) -> None:
        """At start: what the rows call for (a crash before an export; rows from before --keep-best),
        the exports left pending by a worker that stopped first written from the kept files."""
        self._decide({}, at_start=True)

    def after(self, recorded: Recorded) -> None:
        self.after_many([recorded])

    def after_many(self, recorded: list[Recorded]) -> None:
        """Rows just written: decide again, unless none of them can enter what is kept."""
        ours = {one.evaluation.checkpoint: one for one in recorded if one.evaluation.status is Status.OK}
        if not ours:
            return
        manifest = _load(self.directory)
        if self._stale or any(self._may_enter(one.evaluation, manifest) for one in ours.values()):
            self._decide(ours)

    def close(self) -> None:
        pass

    # -- deciding ---------------------------------------------------------------------------------

    def _may_enter(self, row: Evaluation, manifest: Manifest) -> bool:
        """False only when best.json (as any worker last wrote it) holds `keep` checkpoints, all better
        (or the row itself, its exports written)."""
        if manifest.goal is None or len(manifest.kept) < self.keep or manifest.unavailable:
            return True
        name = os.path.basename(row.checkpoint)
        if any(k.checkpoint == name and k.step == row.step and PENDING in k.exports.values() for k in manifest.kept):
            return True  # kept by another worker, its exports left to this one, which has the weights
        value = row.value(manifest.metric or "accuracy")
        if value is None:
            return False
        rank = _rank(value, row.step, manifest.goal)
        return any(rank < _rank(k.value, k.step, manifest.goal) for k in manifest.kept)

    def _decide(self, ours: dict[str, Recorded], at_start: bool = False) -> None:
        """Under the lock: the best rows of the database, their files placed, the others' removed."""
        self._stale = True  # until it is done: a database away leaves it to the next batch
        with self.shared.exclusive(f"best\0{self.directory}"):
            ranking = self.shared.top(self.model_dir, self.evaluation, self.metric, self.keep)
            if ranking.goal is not None:
                self._apply(ranking, ours, at_start)
        self._stale = False

    def _apply(self, ranking: Ranking, ours: dict[str, Recorded], at_start: bool) -> None:
        before = _load(self.directory)
        had = {(k.checkpoint, k.step): k for k in before.kept if self._present(k)}
        kept: list[Kept] = []
        unavailable: list[dict[str, Any]] = []
        entered: list[Kept] = []
        for row in ranking.rows:
            value = row.value(ranking.metric)
            assert value is not None
            name = os.path.basename(row.checkpoint)
            known = had.get((name, row.step))
            if known is not None:
                kept.append(replace(known, value=value))
                continue
            files = self._place_row(row, ours)
            if files is None:
                unavailable.append({"checkpoint": name, "step": row.step, "value": value})
                continue
            entry = Kept(checkpoint=name, step=row.step, value=value, files=files,
                         exports={fmt: PENDING for fmt in self._exports()})
            kept.append(entry)
            entered.append(entry)
        checkpoints.make_dirs(self.directory, self.model_dir)
        kept = [self._export(entry, ours, at_start) for entry in kept]
        manifest = Manifest(ranking.metric, ranking.goal, kept, unavailable)
        _save(self.directory, manifest)
        self._sweep(manifest)
        self.goal, self.kept = ranking.goal, kept
        for entry in entered:
            self.log.info("best checkpoint kept", checkpoint=entry.checkpoint, step=entry.step, metric=ranking.metric,
                          value=round(entry.value, 6), directory=self.directory, kept=len(kept))
        for gone in unavailable:
            if not any(u["checkpoint"] == gone["checkpoint"] for u in before.unavailable):
                self.log.warning("a best checkpoint's files were gone before they could be kept", **gone)

    def _place_row(self, row: Evaluation, ours: dict[str, Recorded]) -> list[str] | None:
        """A best row's files into the directory: from what this worker held open while it evaluated
        it, else from the model directory; None if they are gone."""
        if row.checkpoint in ours and ours[row.checkpoint].held:
            return self._place(ours[row.checkpoint].held)
        path = os.path.join(self.model_dir, row.checkpoint)
        if not checkpoints.exists(path):
            return None
        held = checkpoints.hold(path)
        try:
            return self._place(held) if held else None
        finally:
            checkpoints.release(held)

    def _present(self, kept: Kept) -> bool:
        return bool(kept.files) and all(os.path.exists(os.path.join(self.directory, name)) for name in kept.files)

    def _place(self, held: dict[str, Any]) -> list[str]:
        """Link (or copy) every file in, data before the index, each through a temporary name."""
        checkpoints.make_dirs(self.directory, self.model_dir)
        order = sorted(held, key=lambda name: name.endswith(checkpoints.INDEX_SUFFIX))
        for name in order:
            handle = held[name]
            target = os.path.join(self.directory, name)
            temporary = os.path.join(self.directory, f".{name}.tmp-{os.getpid()}")
            _remove_file(temporary)
            if not _link(handle, temporary):
                handle.seek(0)
                with open(temporary, "wb") as copy:
                    shutil.copyfileobj(handle, copy, 1 << 20)
                    copy.flush()
                    os.fsync(copy.fileno())
            os.replace(temporary, target)
        return order

    # -- exporting --------------------------------------------------------------------------------

    def _exports(self) -> list[str]:
        return [fmt for fmt in self.formats if fmt != "checkpoint"]

    def _export_path(self, fmt: str, step: int | None) -> str:
        return os.path.join(self.directory, fmt, str(step if step is not None else 0) + (".pb" if fmt == "frozen" else ""))

    def _export(self, entry: Kept, ours: dict[str, Recorded], at_start: bool) -> Kept:
        """Write the entry's exports not written yet: by this worker if it has its weights loaded (it
        evaluated it last), or at start from the kept files; else they stay pending."""
        states = dict(entry.exports)
        for fmt in self._exports():
            target = self._export_path(fmt, entry.step)
            if states.get(fmt) == WRITTEN and os.path.exists(target):
                continue
            mine = ours.get(entry.checkpoint)
            loaded = mine is not None and mine.model is not None
            if not loaded and not (at_start and self.model is not None):
                states.setdefault(fmt, PENDING)  # (a failure stays said until one with the weights tries)
                continue
            model = mine.model if loaded and mine is not None else self.model
            try:
                model.export(fmt, target, os.path.join(self.directory, entry.checkpoint), restore=not loaded)
            except Exception as err:  # noqa: BLE001 - an export is never worth the daemon
                error = f"{type(err).__name__}: {first_line(err)}"
                self.log.warning(f"cannot write the {fmt} export", checkpoint=entry.checkpoint, error=error)
                states[fmt] = f"failed: {error}"
                continue
            states[fmt] = WRITTEN
            self.log.info(f"{fmt} exported", path=target, step=entry.step)
        return replace(entry, exports=states)

    # -- what else is there -----------------------------------------------------------------------

    def _sweep(self, manifest: Manifest) -> None:
        """Remove what no kept entry names: checkpoints that left the best, exports of steps no longer
        kept, temporary files of a worker killed while writing (no other writes while we hold the lock)."""
        names = {name for k in manifest.kept for name in k.files}
        steps = {str(k.step if k.step is not None else 0) for k in manifest.kept}
        for path in glob.glob(os.path.join(self.directory, ".*.tmp*")):
            _remove_path(path)
        for path in glob.glob(os.path.join(self.directory, "*")):
            name = os.path.basename(path)
            if name not in names and _is_checkpoint_file(name):
                _remove_file(path)
        for fmt in FORMATS[1:]:
            for path in glob.glob(os.path.join(self.directory, fmt, "*")):
                base = os.path.basename(path)
                step = base[:-3] if base.endswith(".pb") else base
                if step not in steps or base.startswith("."):
                    _remove_path(path)


def _rank(value: float, step: int | None, goal: str) -> tuple[float, int]:
    return ((value if goal == MIN else -value), step or 0)


def _is_checkpoint_file(name: str) -> bool:
    return (name.endswith(checkpoints.INDEX_SUFFIX) or ".data-" in name or checkpoints.is_weight_file(name))


# -- the manifest and the state file ----------------------------------------------------------------

def _load(directory: str) -> Manifest:
    try:
        with open(os.path.join(directory, MANIFEST)) as handle:
            found = json.load(handle)
        return Manifest(found.get("metric"), found.get("goal"), [Kept(**entry) for entry in found["kept"]],
                        list(found.get("unavailable", [])))
    except (OSError, ValueError, KeyError, TypeError):
        return Manifest()


def _save(directory: str, manifest: Manifest) -> None:
    """best.json and the `checkpoint` state file (the best first), each written then renamed."""
    _write_atomically(os.path.join(directory, MANIFEST), json.dumps(asdict(manifest), indent=2) + "\n")
    prefixes = [k.checkpoint for k in manifest.kept if not checkpoints.is_weight_file(k.checkpoint)]
    state = os.path.join(directory, checkpoints.STATE_FILE)
    if not prefixes:
        _remove_file(state)
        return
    steps = {k.checkpoint: k.step or 0 for k in manifest.kept}
    by_step = sorted(prefixes, key=lambda name: steps[name])
    lines = [f'model_checkpoint_path: "{prefixes[0]}"'] + [f'all_model_checkpoint_paths: "{p}"' for p in by_step]
    _write_atomically(state, "\n".join(lines) + "\n")


def _link(handle: Any, target: str) -> bool:
    """Hard-link the file `handle` was opened from, if it is still that file at its path."""
    try:
        if os.stat(handle.name).st_ino != os.fstat(handle.fileno()).st_ino:
            return False
        os.link(handle.name, target)
        return True
    except OSError as err:
        if err.errno in (errno.EXDEV, errno.ENOENT, errno.EPERM, errno.EMLINK, errno.EACCES):
            return False
        raise


def _write_atomically(path: str, text: str) -> None:
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        _remove_file(path)
