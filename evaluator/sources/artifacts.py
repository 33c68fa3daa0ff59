"""A directory of exported models, watched like a checkpoint directory: each one is a "checkpoint".

- `savedmodel`: numbered SavedModel versions (TF Serving's layout, as Keras `model.export`,
  `tf.saved_model.save` and Estimator exporters write it): `EXPORT_DIR/<version>/saved_model.pb`
  with `variables/`; the version number is the step. A directory that is itself a SavedModel is
  one version, named by the directory.
- `frozen-graph`: `*.pb` files of frozen GraphDefs (`freeze_graph`, `convert_variables_to_constants`),
  one each; the step is the last number in the name (`frozen-1200.pb` -> 1200).

A version is listed once its `saved_model.pb` is there (written last, after the variables); one
whose files still change while it is read is retried (attempt.py). Nothing is held open: a
version is a directory, and the best is not copied (--keep-best does not apply here).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import Any

from evaluator import checkpoints
from evaluator.checkpoints import Checkpoint, State
from evaluator.sources import Held

SAVEDMODEL, FROZEN = "savedmodel", "frozen-graph"
KINDS = (SAVEDMODEL, FROZEN)
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
VARIABLES_INDEX = os.path.join("variables", "variables.index")
#: The evaluator's own outputs in the directory (TensorBoard summaries): never versions.
OWN_OUTPUTS = ("eval", "export")
_LAST_NUMBER = re.compile(r"([0-9]+)(?![\s\S]*[0-9])")


def is_savedmodel(path: str) -> bool:
    """Whether `path` is a SavedModel directory whose graph is written."""
    return any(os.path.isfile(os.path.join(path, name)) for name in SAVED_MODEL_FILES)


def version(name: str) -> int | None:
    """The version number a directory's name is (ASCII digits, a 64-bit step), or None."""
    return int(name) if name.isascii() and name.isdigit() and len(name) <= 18 else None


def listing(location: str, kind: str) -> list[Checkpoint]:
    """The exported models in `location`, oldest step first (those without a step last)."""
    root = checkpoints.normalize_model_dir(location)
    if kind == SAVEDMODEL and is_savedmodel(root):  # one SavedModel, not a directory of versions
        name = os.path.basename(root)
        return [Checkpoint(name=name, path=root, name_step=version(name))]
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith(".") or not checkpoints.is_text(entry.name):
            continue
        if kind == SAVEDMODEL and version(entry.name) is not None and entry.is_dir() and is_savedmodel(entry.path):
            found.append(Checkpoint(name=entry.name, path=entry.path, name_step=version(entry.name)))
        elif kind == FROZEN and entry.name.endswith(".pb") and entry.is_file():
            match = _LAST_NUMBER.search(entry.name[: -len(".pb")])
            step = version(match.group(1)) if match else None
            found.append(Checkpoint(name=entry.name, path=entry.path, name_step=step))
    return sorted(found, key=checkpoints.by_step)


def _marker_files(ckpt: Checkpoint) -> list[str]:
    """The files whose bytes say what an exported model is: the graph, and the variables' index."""
    if os.path.isfile(ckpt.path):
        return [ckpt.path]
    return [os.path.join(ckpt.path, name) for name in (*SAVED_MODEL_FILES, VARIABLES_INDEX)
            if os.path.isfile(os.path.join(ckpt.path, name))]


#: (files' stats) -> fingerprint: each version is hashed once.
_fingerprints: dict[tuple[Any, ...], str] = {}


def fingerprint(ckpt: Checkpoint) -> str | None:
    """A hash of the graph file and the variables' index (None: not there)."""
    files = _marker_files(ckpt)
    if not files:
        return None
    try:
        stats = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
        cached = _fingerprints.get(stats)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        for name in files:
            with open(name, "rb") as handle:
                digest.update(handle.read())
    except OSError:
        return None
    if len(_fingerprints) > 10_000:
        _fingerprints.clear()
    _fingerprints[stats] = value = digest.hexdigest()[:16]
    return value


def snapshot(ckpt: Checkpoint) -> tuple[tuple[str, int, int], ...]:
    """(file, size, mtime) of every file of the exported model: what changes while it is written."""
    paths = [ckpt.path] if os.path.isfile(ckpt.path) else [
        os.path.join(directory, name) for directory, _, names in os.walk(ckpt.path) for name in names]
    found = []
    for path in sorted(paths):
        try:
            stat = os.stat(path)
        except OSError:
            continue
        found.append((os.path.relpath(path, os.path.dirname(ckpt.path)), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


class ArtifactDirectory:
    """A directory of SavedModel versions or frozen graphs (see the module docstring)."""

    def __init__(self, location: str, kind: str, *, poll: bool = False, poll_interval: float = 1.0) -> None:
        self.location = checkpoints.normalize_model_dir(location)
        self.artifact = kind
        self._poll = poll
        self._poll_interval = poll_interval
        self._observer: Any = None
        self._on_change: Callable[[], None] | None = None

    # -- what is there now ------------------------------------------------------------------------

    def listed(self) -> State:
        return State(checkpoints=listing(self.location, self.artifact))

    def has_state_file(self) -> bool:
        return False

    def waiting_for(self) -> str:
        if self.artifact == SAVEDMODEL:
            return "numbered SavedModel versions (1/, 2/, ... each with saved_model.pb)"
        return "frozen GraphDef files (*.pb)"

    def found(self, families: set[str]) -> list[Checkpoint]:
        return []  # everything there is listed

    def started(self, ckpt: Checkpoint) -> bool:
        return os.path.exists(ckpt.path)

    def complete(self, ckpt: Checkpoint) -> bool:
        if self.artifact == FROZEN:
            return os.path.isfile(ckpt.path)
        variables = os.path.join(ckpt.path, "variables")
        return is_savedmodel(ckpt.path) and (not os.path.isdir(variables) or
                                            os.path.isfile(os.path.join(ckpt.path, VARIABLES_INDEX)))

    def fingerprint(self, ckpt: Checkpoint) -> str | None:
        return fingerprint(ckpt)

    def files(self, ckpt: Checkpoint) -> tuple[tuple[str, int, int], ...]:
        return snapshot(ckpt)

    # -- a change -------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        if self._observer is None:
            return "none"
        return "polling" if self._poll else "inotify"

    def watch(self, on_change: Callable[[], None], on_written: Callable[[Checkpoint], None]) -> None:
        """Any change below the directory (a version's files, a .pb renamed into place) wakes the
        loop, which lists the directory again."""
        self._on_change = on_change
        self.ensure()

    def ensure(self) -> bool:
        if not os.path.isdir(self.location):
            self.stop()
            return False
        if self._observer is None and self._on_change is not None:
            self._start()
        return True

    def _start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        on_change = self._on_change
        assert on_change is not None
        root = self.location

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                relative = os.path.relpath(os.fsdecode(event.src_path), root)
                if relative.split(os.sep)[0].startswith(OWN_OUTPUTS):
                    return  # the evaluator's own summaries
                on_change()

        observer = PollingObserver(timeout=self._poll_interval) if self._poll else Observer()
        try:
            observer.schedule(_Handler(), self.location, recursive=True)
        except OSError:  # gone again, or out of inotify watches: the re-scan ticks still list it
            return
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    # -- a stable copy ----------------------------------------------------------------------------

    # Exported models are not pinned (an exporter keeping the last N versions may delete one before
    # its turn: it is recorded missing).
    def pin(self, ckpt: Checkpoint) -> bool:
        return False

    def done(self, ckpt: Checkpoint) -> None:
        pass

    def pinned(self) -> list[Checkpoint]:
        return []

    def hold(self, ckpt: Checkpoint) -> Held:
        """The exported model where it is (no files held: nothing is copied from it)."""
        return Held(path=ckpt.path)
