"""The model directories one `watch` serves: each a Run with its own backlog, watcher, actions and
what it last saw; `--root` discovers them below a directory as training jobs create them, and
forgets those that disappear.

A Run reads its source (sources/: the state file, the files there) and the database's rows for it;
it never evaluates: the service takes pending checkpoints from every run in turn.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from evaluator import log
from evaluator.actions import Action
from evaluator.backlog import Backlog
from evaluator.checkpoints import Checkpoint
from evaluator.errors import DatabaseError, StateFileError, StoreWriteError
from evaluator.evaluation import Evaluation
from evaluator.sources import Source
from evaluator.store import Store

#: Up to this many new checkpoints are logged one line each; more make one summary line.
DETAIL_LINES = 10


class Run:
    """One model directory: what is pending in it, and how it is watched."""

    def __init__(self, source: Source, *, grace: float, name: str, on_new: Callable[[], None]) -> None:
        self.source = source
        self.model_dir = source.location
        self.name = name
        self.log = log.get(model_dir=self.model_dir)
        self.backlog = Backlog(source, grace=grace)
        self.actions: list[Action] = []
        self.last: Evaluation | None = None
        self.state_problem: str | None = None
        self.present: bool | None = None
        self.last_rescan = -math.inf
        #: When the rows were last read from the database (at start, then by each re-scan).
        self.rows_loaded_at = -math.inf
        self.said_waiting = False
        #: Whether the source is watched for changes (not with --once).
        self.watching = False
        #: Called when something new was detected (the end of training's idle clock).
        self._on_new = on_new
        self._lock = threading.Lock()

    # -- watching ----------------------------------------------------------------------------

    def watch(self, wake: Callable[[], None], busy: threading.Event) -> None:
        """Start watching the source: a change wakes the loop (and is read at once while it is busy)."""

        def changed() -> None:
            if busy.is_set():  # rotations during an evaluation would hide checkpoints: note them now
                self.observe()
            wake()

        def written(ckpt: Checkpoint) -> None:
            self.detected(self.backlog.found_on_disk([ckpt]), "index written")
            wake()

        self.source.watch(changed, written)
        self.watching = True

    def ensure_watch(self, notifier: Any) -> tuple[bool, bool]:
        """Whether the directory is there (and watched), and whether it just appeared; logs when
        that changes."""
        present = self.source.ensure()
        appeared = present and present != self.present
        if present != self.present:
            if present:
                if self.watching:
                    self.log.info("watching", observer=self.source.kind)
                else:
                    self.log.info("model directory found")
            else:
                self.log.warning("model directory is missing; waiting for it to appear")
                notifier.status(f"waiting for {self.model_dir} to appear")
            self.present = present
        return present, appeared

    def stop(self) -> None:
        """Stop watching; say what stays pinned (a stop lets no pin go: the next start evaluates them)."""
        self.source.stop()
        say_pinned(self.source, self.log)

    # -- what is pending -----------------------------------------------------------------------

    def observe(self) -> bool:
        """Read the state file and add the listed checkpoints without a row to the backlog; returns
        whether the directory was scanned too (a new family of names)."""
        try:
            state = self.source.listed()
        except StateFileError as err:
            self.state_file_problem(str(err))
            return False
        self.state_file_problem(None)
        new, ignored, new_family = self.backlog.observe(state)
        for path in ignored:
            self.log.warning("state file lists a path outside the model directory; ignored", path=path)
        self.detected(new, "state file")
        if new_family:  # its checkpoints already on disk (those the state file doesn't list) count too
            self.scan_disk()
        return new_family

    def load_rows(self, store: Store) -> None:
        self.backlog.set_recorded(store.recorded(self.model_dir, self.name))
        self.rows_loaded_at = time.monotonic()
        self.adopt_pins()

    def adopt_pins(self) -> None:
        """The pinned checkpoints (by an earlier process too): those with a row let go, the others
        pending, whatever training did to their files meanwhile."""
        pinned = self.source.pinned()
        for ckpt in pinned:
            if self.backlog.is_recorded(ckpt):
                self.source.done(ckpt)
        self.detected(self.backlog.found_on_disk(pinned, any_family=True), "pinned")

    def rescan(self, store: Store, interval: float, disk: bool = True) -> None:
        """The safety net, every --rescan seconds: rows written by others (or removed by `evaluator
        retry`), and checkpoints on disk that no event or state file reported (unless `disk` is
        False: the directory was just scanned)."""
        self.last_rescan = time.monotonic()
        if self.last_rescan - self.rows_loaded_at >= interval:  # not just loaded
            try:
                self.load_rows(store)
            except (DatabaseError, StoreWriteError) as err:
                self.log.warning("cannot read the database; will try again", error=str(err))
        if disk:
            self.scan_disk()

    def scan_disk(self) -> None:
        found = self.source.found(self.backlog.families)
        self.detected(self.backlog.found_on_disk(found), "directory scan")

    def detected(self, new: list[Checkpoint], source: str) -> None:
        """Checkpoints new to the backlog: pinned (those complete), logged."""
        for ckpt in new:
            self.source.pin(ckpt)
        if new:
            self._on_new()
        if len(new) <= DETAIL_LINES:
            for ckpt in new:
                # The name's number only: the row's step is the global step read at restore.
                self.log.info("checkpoint detected", checkpoint=ckpt.name, name_step=ckpt.name_step,
                              source=source)
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
        if self.source.has_state_file():
            return
        self.said_waiting = True
        self.log.info("no checkpoints yet", waiting_for=self.source.waiting_for())


def say_pinned(source: Source, logger: Any) -> None:
    """At a stop: what stays pinned for the next start (which evaluates those without a row)."""
    left = source.pinned()
    if left:
        logger.info("checkpoints stay pinned for the next start", count=len(left), first=left[0].name,
                    last=left[-1].name)
