"""A model directory on a local (or network) file system: the first source.

Changes come from inotify (watchdog), or from polling with `--poll` on file systems whose events
don't arrive (NFS): the state file renamed into place, an `.index` appearing. What is there is read
from the `checkpoint` state file and a scan of the directory (checkpoints.py knows the formats).
A checkpoint is held by opening its files: training's `max_to_keep` then removes the names but not
the data, and the best kept is copied from the open descriptors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from evaluator import checkpoints
from evaluator.checkpoints import Checkpoint, State
from evaluator.sources import Held
from evaluator.sources.pins import Pins
from evaluator.sources.watcher import Watcher

#: Directories --root never descends into: what the evaluator itself writes into a model directory.
OWN_OUTPUTS = ("eval", "export")


class LocalDirectory:
    """One model directory on a file system."""

    def __init__(self, model_dir: str, *, weight_files: bool, poll: bool = False, poll_interval: float = 1.0,
                 pins: Pins | None = None) -> None:
        self.location = checkpoints.normalize_model_dir(model_dir)
        #: Whether Keras weight files are checkpoints here (the model's kind decides).
        self.weight_files = weight_files
        self._poll = poll
        self._poll_interval = poll_interval
        self._watcher: Watcher | None = None
        #: Where complete checkpoints are pinned (None: not pinned).
        self.pins = pins
        #: What the watcher calls, set by `watch` (the watcher may start before the run exists).
        self._on_change: Callable[[], None] = _nothing
        self._on_written: Callable[[Checkpoint], None] = _nothing

    # -- what is there now ------------------------------------------------------------------------

    def listed(self) -> State:
        return checkpoints.read_state(self.location)

    def has_state_file(self) -> bool:
        return os.path.exists(os.path.join(self.location, checkpoints.STATE_FILE))

    def waiting_for(self) -> str:
        what = "a `checkpoint` state file (tf.train.Checkpoint, CheckpointManager, tf.compat.v1 Saver)"
        return what + (" or Keras weight files (*.weights.h5, *.keras)" if self.weight_files else "")

    def found(self, families: set[str]) -> list[Checkpoint]:
        return checkpoints.scan(self.location, families, weight_files=self.weight_files)

    def started(self, ckpt: Checkpoint) -> bool:
        return os.path.exists(checkpoints.marker(ckpt.path))

    def complete(self, ckpt: Checkpoint) -> bool:
        return checkpoints.exists(ckpt.path) or self._pinned_path(ckpt) is not None

    def fingerprint(self, ckpt: Checkpoint) -> str | None:
        found = checkpoints.fingerprint(ckpt.path)
        if found is None and (pinned := self._pinned_path(ckpt)) is not None:
            return checkpoints.fingerprint(pinned)  # training deleted it; the pin holds it
        return found

    def files(self, ckpt: Checkpoint) -> tuple[tuple[str, int, int], ...]:
        return checkpoints.snapshot(ckpt.path)

    # -- a change -------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._watcher.kind if self._watcher is not None else "none"

    def watch(self, on_change: Callable[[], None], on_written: Callable[[Checkpoint], None]) -> None:
        """Start the watcher (or, already started to pin before the model was built, hand it the
        run's callbacks). A checkpoint whose index appears is pinned at once, in the watcher's thread."""
        self._on_change, self._on_written = on_change, on_written
        if self._watcher is not None:
            return

        def written(prefix: str) -> None:
            ckpt = checkpoints.at(self.location, prefix)
            if ckpt is not None and self._reads(ckpt):
                self.pin(ckpt)
                self._on_written(ckpt)

        self._watcher = Watcher(self.location, lambda: self._on_change(), on_written=written,
                                weight_files=self.weight_files, poll=self._poll, poll_interval=self._poll_interval)
        self._watcher.start()

    def ensure(self) -> bool:
        return self._watcher.ensure() if self._watcher is not None else os.path.isdir(self.location)

    @property
    def watching(self) -> bool:
        return self._watcher is not None

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    # -- a stable copy ----------------------------------------------------------------------------

    def hold(self, ckpt: Checkpoint) -> Held:
        """Its pin when it is pinned (training may delete its files any moment), else the files."""
        path = self._pinned_path(ckpt) or ckpt.path
        return Held(path=path, files=checkpoints.hold(path))

    # -- pins -------------------------------------------------------------------------------------

    def pin(self, ckpt: Checkpoint) -> bool:
        return self.pins is not None and self._reads(ckpt) and self.pins.pin(ckpt)

    def done(self, ckpt: Checkpoint) -> None:
        if self.pins is not None:
            self.pins.release(ckpt)

    def reads_weight_files(self, weight_files: bool) -> None:
        """The model's kind is known (watched and pinned before it was): without weight files, the
        weight files pinned meanwhile are not its checkpoints."""
        self.weight_files = weight_files
        if self.pins is not None and not weight_files:
            for name in self.pins.pinned():
                ckpt = checkpoints.at(self.location, name)
                if ckpt is not None and not self._reads(ckpt):
                    self.pins.release(ckpt)

    def pinned(self) -> list[Checkpoint]:
        if self.pins is None:
            return []
        found = [checkpoints.at(self.location, name) for name in self.pins.pinned()]
        return [ckpt for ckpt in found if ckpt is not None and self._reads(ckpt)]

    def _reads(self, ckpt: Checkpoint) -> bool:
        """Whether `ckpt` is a checkpoint of this model's kind (a weight file only for TF2 tasks)."""
        return self.weight_files or not ckpt.is_weight_file

    def _pinned_path(self, ckpt: Checkpoint) -> str | None:
        return self.pins.held_path(ckpt) if self.pins is not None else None


def _nothing(*args: object) -> None:
    pass


class RootWatcher:
    """Watches a `--root` tree for new runs: a `checkpoint` state file (or a weight file) written, or
    a directory made, anywhere below it calls `on_change`, so a new run is served within a moment
    rather than at the next --rescan. The evaluator's own outputs (eval*/, export/) are not runs."""

    def __init__(self, root: str, on_change: Callable[[], None], *, weight_files: bool) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.root = checkpoints.normalize_model_dir(root)
        outer = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for path in (event.src_path, getattr(event, "dest_path", "") or ""):
                    if outer._announces_a_run(os.fsdecode(path), event.is_directory):
                        on_change()
                        return

        self._weight_files = weight_files
        self._observer = Observer()
        self._handler = _Handler()

    def start(self) -> bool:
        """Start watching; False when the root is not there (the --rescan ticks look for it)."""
        if not os.path.isdir(self.root):
            return False
        try:
            self._observer.schedule(self._handler, self.root, recursive=True)
        except OSError:  # out of inotify watches, or gone again: the ticks still find runs
            return False
        self._observer.daemon = True
        self._observer.start()
        return True

    def stop(self) -> None:
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=5)

    def _announces_a_run(self, path: str, is_directory: bool) -> bool:
        if not path.startswith(self.root + os.sep):
            return False
        parts = path[len(self.root) + 1:].split(os.sep)
        if any(part.startswith(OWN_OUTPUTS) for part in parts[:-1 if not is_directory else None]):
            return False
        name = parts[-1]
        return is_directory or name == checkpoints.STATE_FILE or (self._weight_files and checkpoints.is_weight_file(name))


def discover(root: str, depth: int, weight_files: bool) -> list[str]:
    """The directories at most `depth` levels below `root` (itself included) that hold a `checkpoint`
    state file (or, with `weight_files`, Keras weight files): the runs a `--root` watch serves.
    The evaluator's own outputs (eval*/, export/) are not runs."""
    found = []
    for directory, level in _walk(checkpoints.normalize_model_dir(root), depth):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        if checkpoints.STATE_FILE in names or (weight_files and any(checkpoints.is_weight_file(n) for n in names)):
            found.append(directory)
    return sorted(found)


def _walk(root: str, depth: int) -> Iterator[tuple[str, int]]:
    stack = [(root, 0)]
    while stack:
        directory, level = stack.pop()
        yield directory, level
        if level >= depth:
            continue
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".") and \
                    not entry.name.startswith(OWN_OUTPUTS):
                stack.append((entry.path, level + 1))
