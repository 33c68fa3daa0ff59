"""The best checkpoints kept where training's `max_to_keep` cannot delete them, and exported.

When a checkpoint enters the best `keep` by the chosen metric (in the metric's direction), its files
go to EXPORT_DIR (default MODEL_DIR/export/best): hard links when on the same file system, else
copies, each written under a temporary name and renamed, with a `checkpoint` state file of its own
so `tf.train.latest_checkpoint(EXPORT_DIR)` finds the best. The files are copied from descriptors
opened before the evaluation, so a checkpoint that training deleted meanwhile is still kept.
Optionally a SavedModel (`savedmodel/<step>/`) or a frozen GraphDef (`frozen/<step>.pb`) of the
weights that were evaluated (the averages) is written beside it, also atomically.

`best.json` lists what is kept; at start it is reconciled with the database's rows.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from evaluator import checkpoints
from evaluator.actions import Recorded
from evaluator.errors import first_line
from evaluator.evaluation import MIN, Evaluation, Status

MANIFEST = "best.json"
FORMATS = ("checkpoint", "savedmodel", "frozen")


@dataclass(frozen=True)
class Kept:
    """One kept checkpoint."""

    checkpoint: str
    step: int | None
    value: float
    files: list[str]


class BestExport:
    """Keeps the best `keep` checkpoints by `metric` in `directory` (and exports them in `formats`)."""

    name = "export"

    def __init__(self, directory: str, model_dir: str, metric: str | None, keep: int, formats: tuple[str, ...],
                 log: Any) -> None:
        self.directory = directory
        self.model_dir = model_dir
        self.metric = metric
        self.keep = keep
        self.formats = formats
        self.log = log
        self.goal: str | None = None
        self.kept: list[Kept] = self._load()

    # -- the action -------------------------------------------------------------------------------

    def catch_up(self, rows: Iterable[Evaluation]) -> None:
        """Rows better than what is kept (a crash before the export): keep them if their files are still there."""
        ok = [row for row in rows if row.status is Status.OK]
        self._choose_metric(ok)
        for row in sorted(ok, key=self._rank)[: self.keep]:
            if self._qualifies(row) and checkpoints.exists(os.path.join(self.model_dir, row.checkpoint)):
                held = checkpoints.hold(os.path.join(self.model_dir, row.checkpoint))
                try:
                    self._keep(row, held, None)
                finally:
                    checkpoints.release(held)

    def after(self, recorded: Recorded) -> None:
        row = recorded.evaluation
        if row.status is not Status.OK:
            return
        self._choose_metric([row])
        if self._qualifies(row):
            self._keep(row, recorded.held, recorded.model)

    def after_many(self, recorded: list[Recorded]) -> None:
        """A batch: only its best `keep` rows can enter the best kept (any other has `keep` better
        ones beside it), so only they are considered, by step as they came."""
        ok = [one for one in recorded if one.evaluation.status is Status.OK]
        self._choose_metric([one.evaluation for one in ok])
        best = {id(one) for one in sorted(ok, key=lambda one: self._rank(one.evaluation))[: self.keep]}
        for one in recorded:
            if id(one) in best:
                self.after(one)

    def close(self) -> None:
        pass

    # -- choosing ---------------------------------------------------------------------------------

    def _choose_metric(self, rows: list[Evaluation]) -> None:
        """The default metric is accuracy, else (a regression) loss; the direction is the row's."""
        if self.metric is None and rows:
            self.metric = "accuracy" if any(r.value("accuracy") is not None for r in rows) else "loss"
        if self.goal is None and self.metric is not None:
            name = self.metric.rpartition("/")[2]
            for row in rows:
                if row.goals and name in row.goals:
                    self.goal = row.goals[name]
                    break
            else:
                if rows:
                    self.goal = MIN if name == "loss" else "max"

    def _rank(self, row: Evaluation) -> tuple[float, int]:
        value = row.value(self.metric or "accuracy")
        if value is None:
            return (float("inf"), 0)
        return ((value if self.goal == MIN else -value), row.step or 0)

    def _better(self, value: float, than: float) -> bool:
        return value < than if self.goal == MIN else value > than

    def _qualifies(self, row: Evaluation) -> bool:
        value = row.value(self.metric or "accuracy")
        if value is None or any(k.checkpoint == row.checkpoint and k.step == row.step for k in self.kept):
            return False
        if len(self.kept) < self.keep:
            return True
        return self._better(value, self._worst().value)

    def _worst(self) -> Kept:
        return max(self.kept, key=lambda k: (k.value if self.goal == MIN else -k.value))

    # -- keeping ----------------------------------------------------------------------------------

    def _keep(self, row: Evaluation, held: dict[str, Any], model: Any) -> None:
        value = row.value(self.metric or "accuracy")
        assert value is not None
        if not held:
            self.log.warning("the new best checkpoint's files were gone before they could be kept",
                             checkpoint=row.checkpoint)
            return
        os.makedirs(self.directory, exist_ok=True)
        names = self._place(held)
        kept = Kept(checkpoint=os.path.basename(row.checkpoint), step=row.step, value=value, files=names)
        self.kept.append(kept)
        dropped = []
        while len(self.kept) > self.keep:
            worst = self._worst()
            self.kept.remove(worst)
            dropped.append(worst)
        self._save()
        for old in dropped:
            self._remove(old)
        self.log.info("best checkpoint kept", checkpoint=row.checkpoint, step=row.step, metric=self.metric,
                      value=round(value, 6), directory=self.directory, kept=len(self.kept))
        if model is not None:
            self._export(kept, model)
        elif set(self.formats) - {"checkpoint"}:
            self.log.info("the SavedModel / frozen graph of a best checkpoint found at start is not written "
                          "(its weights are not loaded); the next best gets one", checkpoint=row.checkpoint)

    def _place(self, held: dict[str, Any]) -> list[str]:
        """Link (or copy) every file in, data before the index, each through a temporary name."""
        order = sorted(held, key=lambda name: name.endswith(checkpoints.INDEX_SUFFIX))
        for name in order:
            handle = held[name]
            target = os.path.join(self.directory, name)
            temporary = os.path.join(self.directory, f".{name}.tmp")
            _remove_file(temporary)
            if not _link(handle, temporary):
                handle.seek(0)
                with open(temporary, "wb") as copy:
                    shutil.copyfileobj(handle, copy, 1 << 20)
                    copy.flush()
                    os.fsync(copy.fileno())
            os.replace(temporary, target)
        return order

    def _export(self, kept: Kept, model: Any) -> None:
        for fmt in self.formats:
            if fmt == "checkpoint":
                continue
            step = kept.step if kept.step is not None else 0
            target = os.path.join(self.directory, fmt, str(step) + (".pb" if fmt == "frozen" else ""))
            try:
                model.export(fmt, target, os.path.join(self.directory, kept.checkpoint))
            except Exception as err:  # noqa: BLE001 - an export is never worth the daemon
                self.log.warning(f"cannot write the {fmt} export", checkpoint=kept.checkpoint,
                                 error=f"{type(err).__name__}: {first_line(err)}")
                continue
            self.log.info(f"{fmt} exported", path=target, step=step)

    def _remove(self, old: Kept) -> None:
        if any(k.checkpoint == old.checkpoint for k in self.kept):
            return
        for name in old.files:
            _remove_file(os.path.join(self.directory, name))
        step = str(old.step if old.step is not None else 0)
        shutil.rmtree(os.path.join(self.directory, "savedmodel", step), ignore_errors=True)
        _remove_file(os.path.join(self.directory, "frozen", step + ".pb"))

    # -- the manifest and the state file ----------------------------------------------------------

    def _load(self) -> list[Kept]:
        try:
            with open(os.path.join(self.directory, MANIFEST)) as handle:
                entries = json.load(handle)["kept"]
            return [Kept(**entry) for entry in entries]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _save(self) -> None:
        """best.json and the `checkpoint` state file (the best first), each written then renamed."""
        ordered = sorted(self.kept, key=lambda k: (k.value if self.goal == MIN else -k.value))
        _write_atomically(os.path.join(self.directory, MANIFEST),
                          json.dumps({"metric": self.metric, "goal": self.goal,
                                      "kept": [asdict(k) for k in ordered]}, indent=2) + "\n")
        prefixes = [k.checkpoint for k in ordered if not checkpoints.is_weight_file(k.checkpoint)]
        if prefixes:
            by_step = sorted(prefixes, key=lambda name: next(k.step or 0 for k in ordered if k.checkpoint == name))
            lines = [f'model_checkpoint_path: "{prefixes[0]}"'] + [f'all_model_checkpoint_paths: "{p}"' for p in by_step]
            _write_atomically(os.path.join(self.directory, checkpoints.STATE_FILE), "\n".join(lines) + "\n")


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
    temporary = path + ".tmp"
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
