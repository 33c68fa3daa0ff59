"""The model directories one `watch` serves: each a Run with its own backlog, watcher, actions and
what it last saw; `--root` discovers them below a directory as training jobs create them, and
forgets those that disappear.

A Run reads its directory (the state file, the files on disk) and the database's rows for it; it
never evaluates: the service takes pending checkpoints from every run in turn.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from evaluator import checkpoints, log
from evaluator.actions import Action
from evaluator.backlog import Backlog
from evaluator.checkpoints import Checkpoint
from evaluator.errors import DatabaseError, StateFileError, StoreWriteError
from evaluator.evaluation import Evaluation
from evaluator.store import Store
from evaluator.watcher import Watcher

#: Up to this many new checkpoints are logged one line each; more make one summary line.
DETAIL_LINES = 10
#: Directories --root never descends into: what the evaluator itself writes into a model directory.
OWN_OUTPUTS = ("eval", "export")


class Run:
    """One model directory: what is pending in it, and how it is watched."""

    def __init__(self, model_dir: str, *, grace: float, name: str, weight_files: bool,
                 on_new: Callable[[], None]) -> None:
        self.model_dir = model_dir
        self.name = name
        #: Whether Keras weight files are checkpoints here (the model's kind decides).
        self.weight_files = weight_files
        self.log = log.get(model_dir=model_dir)
        self.backlog = Backlog(model_dir, grace=grace)
        self.watcher: Watcher | None = None
        self.actions: list[Action] = []
        self.last: Evaluation | None = None
        self.state_problem: str | None = None
        self.present: bool | None = None
        self.last_rescan = -math.inf
        #: When the rows were last read from the database (at start, then by each re-scan).
        self.rows_loaded_at = -math.inf
        self.said_waiting = False
        #: Called when something new was detected (the end of training's idle clock).
        self._on_new = on_new
        self._lock = threading.Lock()

    # -- watching ----------------------------------------------------------------------------

    def watch(self, wake: Callable[[], None], busy: threading.Event, *, poll: bool, poll_interval: float) -> None:
        """Start the watcher: a change wakes the loop (and is read at once while it is busy)."""

        def changed() -> None:
            if busy.is_set():  # rotations during an evaluation would hide checkpoints: note them now
                self.observe()
            wake()

        def written(prefix: str) -> None:
            ckpt = checkpoints.at(self.model_dir, prefix)
            if ckpt is not None:
                self.detected(self.backlog.found_on_disk([ckpt]), "index written")
                wake()

        self.watcher = Watcher(self.model_dir, changed, on_written=written, weight_files=self.weight_files,
                               poll=poll, poll_interval=poll_interval)
        self.watcher.start()

    def ensure_watch(self, notifier: Any) -> tuple[bool, bool]:
        """Whether the directory is there (and watched), and whether it just appeared; logs when
        that changes."""
        present = self.watcher.ensure() if self.watcher else os.path.isdir(self.model_dir)
        appeared = present and present != self.present
        if present != self.present:
            if present:
                if self.watcher:
                    self.log.info("watching", observer=self.watcher.kind)
                else:
                    self.log.info("model directory found")
            else:
                self.log.warning("model directory is missing; waiting for it to appear")
                notifier.status(f"waiting for {self.model_dir} to appear")
            self.present = present
        return present, appeared

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    # -- what is pending -----------------------------------------------------------------------

    def observe(self) -> None:
        """Read the state file and add the listed checkpoints without a row to the backlog."""
        try:
            state = checkpoints.read_state(self.model_dir)
        except StateFileError as err:
            self.state_file_problem(str(err))
            return
        self.state_file_problem(None)
        new, ignored, new_family = self.backlog.observe(state)
        for path in ignored:
            self.log.warning("state file lists a path outside the model directory; ignored", path=path)
        self.detected(new, "state file")
        if new_family:  # its checkpoints already on disk (those the state file doesn't list) count too
            self.scan_disk()

    def load_rows(self, store: Store) -> None:
        self.backlog.set_recorded(store.recorded(self.model_dir, self.name))
        self.rows_loaded_at = time.monotonic()

    def rescan(self, store: Store, interval: float) -> None:
        """The safety net, every --rescan seconds: rows written by others (or removed by `evaluator
        retry`), and checkpoints on disk that no event or state file reported."""
        self.last_rescan = time.monotonic()
        if self.last_rescan - self.rows_loaded_at >= interval:  # not just loaded
            try:
                self.load_rows(store)
            except (DatabaseError, StoreWriteError) as err:
                self.log.warning("cannot read the database; will try again", error=str(err))
        self.scan_disk()

    def scan_disk(self) -> None:
        found = checkpoints.scan(self.model_dir, self.backlog.families, weight_files=self.weight_files)
        self.detected(self.backlog.found_on_disk(found), "directory scan")

    def detected(self, new: list[Checkpoint], source: str) -> None:
        if new:
            self._on_new()
        if len(new) <= DETAIL_LINES:
            for ckpt in new:
                self.log.info("checkpoint detected", checkpoint=ckpt.name, step=ckpt.name_step, source=source)
        else:
            self.log.info("checkpoints detected", count=len(new), first=new[0].name, last=new[-1].name,
                          source=source)

    def state_file_problem(self, problem: str | None) -> None:
        with self._lock:
            changed, self.state_problem = problem != self.state_problem, problem
        if changed and problem:
            self.log.warning("state file unreadable; waiting for a valid one", error=problem)
        elif changed:
            self.log.info("state file readable again")

    def say_what_it_waits_for(self) -> None:
        """Once, after the first pass over a directory holding no checkpoint at all: say what would be one."""
        if self.said_waiting or len(self.backlog) or self.backlog.recorded_count() or self.state_problem:
            return
        if os.path.exists(os.path.join(self.model_dir, checkpoints.STATE_FILE)):
            return
        self.said_waiting = True
        what = "a `checkpoint` state file (tf.train.Checkpoint, CheckpointManager, tf.compat.v1 Saver)"
        if self.weight_files:
            what += " or Keras weight files (*.weights.h5, *.keras)"
        self.log.info("no checkpoints yet", waiting_for=what)


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
