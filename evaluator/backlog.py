"""What is pending in one model directory: the checkpoints seen (listed in the state file, or their
`.index` on disk) that have no row yet, when each may be tried next, and which count as missing.

Pending is derived from what was seen and from the rows in the database, never from events alone,
so a missed event only delays a checkpoint and a restart resumes where the rows end. The watcher's
thread and the loop both call in; a lock guards the state.

`missing` is for a checkpoint that was on disk and was deleted before it could be read, or that the
state file lists but that never appeared within the grace period while a newer checkpoint did
(a copy in progress writes `checkpoint` before the `model.ckpt-*` files: not yet there is not gone).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from evaluator import checkpoints
from evaluator.checkpoints import Checkpoint, State
from evaluator.sources import Source
from evaluator.sources.local import LocalDirectory

#: A listed checkpoint never seen on disk is `missing` after this many seconds, if a newer one is there.
DEFAULT_GRACE = 60.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Pending:
    """A checkpoint without a row, what is known of it, and when it may be tried next."""

    checkpoint: Checkpoint
    #: When it was first seen (recorded in its row).
    detected_at: datetime
    #: time.monotonic() of the same moment (for the grace period).
    first_seen: float
    order: int
    #: Listed in the state file (False: found as an `.index` on disk).
    listed: bool
    #: Its `.index` was seen on disk at least once: if it is gone now, it was deleted.
    seen_on_disk: bool
    #: time.monotonic() before which it is not tried again (a retry's backoff).
    not_before: float = 0.0
    #: Reads that came up short so far, and the checkpoint's files at the last one.
    short_reads: int = 0
    files: tuple[tuple[str, int, int], ...] = ()
    #: Evaluation faults (not the checkpoint's) on this checkpoint so far.
    faults: int = 0

    @property
    def sort_key(self) -> tuple[bool, int, int]:
        step = self.checkpoint.name_step
        return step is None, step or 0, self.order


class Backlog:
    """The pending checkpoints of one model directory under one evaluation name."""

    def __init__(self, source: Source | str, *, grace: float = DEFAULT_GRACE) -> None:
        if isinstance(source, str):  # a model directory's path: its local directory
            source = LocalDirectory(source, weight_files=False)
        self.source = source
        self.model_dir = source.location
        self.grace = grace
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        #: checkpoint name -> fingerprints recorded ("" stands for any; see Store.recorded).
        self._recorded: dict[str, set[str]] = {}
        #: Name families (`model.ckpt`) of the checkpoints the state file has listed.
        self.families: set[str] = set()
        self._order = itertools.count()
        #: The newest step and the latest detection order seen on disk: what makes an absent one missing.
        self._newest_step_on_disk = -1
        self._latest_order_on_disk = -1
        self._ignored: set[str] = set()

    # -- what the database holds --------------------------------------------------------------

    def set_recorded(self, recorded: dict[str, set[str]]) -> None:
        """Take the rows the database holds now (at start, and on every re-scan: other evaluators,
        `evaluator retry`); pending checkpoints that have a row now are dropped."""
        with self._lock:
            self._recorded = recorded
            for name in [n for n, p in self._pending.items() if self._is_recorded(p.checkpoint)]:
                del self._pending[name]

    def recorded_count(self) -> int:
        with self._lock:
            return len(self._recorded)

    def done(self, pending: Pending, fingerprint: str | None) -> None:
        """`pending` has a row now (recorded by us or by another evaluator)."""
        with self._lock:
            self._pending.pop(pending.checkpoint.name, None)
            fingerprints = self._recorded.setdefault(pending.checkpoint.name, set())
            if fingerprint:
                fingerprints.add(fingerprint)

    def is_recorded(self, ckpt: Checkpoint) -> bool:
        with self._lock:
            return self._is_recorded(ckpt)

    def _is_recorded(self, ckpt: Checkpoint) -> bool:
        fingerprints = self._recorded.get(ckpt.name)
        if fingerprints is None:
            return False
        if "" in fingerprints:
            return True
        found = self.source.fingerprint(ckpt)
        return found is None or found in fingerprints  # gone: its row says what became of it

    # -- what was seen ------------------------------------------------------------------------

    def observe(self, state: State) -> tuple[list[Checkpoint], list[str], bool]:
        """Take one read of the state file; returns the checkpoints new to the backlog, the listed
        paths outside the model directory not reported before, and whether it named a family of
        checkpoints not seen before (whose files on disk are then worth a look)."""
        new: list[Checkpoint] = []
        with self._lock:
            families = len(self.families)
            for ckpt in state.checkpoints:
                self.families.add(checkpoints.family(ckpt.name))
                pending = self._pending.get(ckpt.name)
                if pending is not None:
                    pending.listed = True
                elif not self._is_recorded(ckpt):
                    self._add(ckpt, listed=True, on_disk=self.source.complete(ckpt))
                    new.append(ckpt)
            ignored = [path for path in state.ignored if path not in self._ignored]
            self._ignored.update(ignored)
            new_family = len(self.families) > families
        return new, ignored, new_family

    def found_on_disk(self, found: list[Checkpoint], any_family: bool = False) -> list[Checkpoint]:
        """Checkpoints whose `.index` is on disk (an event, or a scan of the directory), in families
        the state file lists (or of `any_family`: pinned ones), and Keras weight files; returns those
        new to the backlog. One counts as seen on disk (so that its disappearance means deletion)
        once its data is there too."""
        new: list[Checkpoint] = []
        with self._lock:
            for ckpt in found:
                if not (any_family or ckpt.is_weight_file) and checkpoints.family(ckpt.name) not in self.families:
                    continue
                # Seen on disk: complete now, or already deleted again (max_to_keep). An index
                # whose data has not arrived yet (an odd copy order) is not there yet.
                complete = self.source.complete(ckpt) or not self.source.started(ckpt)
                pending = self._pending.get(ckpt.name)
                if pending is not None:
                    if complete:
                        self._saw_on_disk(pending)
                elif not self._is_recorded(ckpt):
                    self._add(ckpt, listed=False, on_disk=complete)
                    new.append(ckpt)
        return new

    def _add(self, ckpt: Checkpoint, *, listed: bool, on_disk: bool) -> None:
        pending = Pending(ckpt, utcnow(), time.monotonic(), next(self._order), listed=listed, seen_on_disk=False)
        self._pending[ckpt.name] = pending
        if on_disk:
            self._saw_on_disk(pending)

    def _saw_on_disk(self, pending: Pending) -> None:
        if not pending.seen_on_disk:
            pending.not_before = 0.0  # it was waiting for its files: they are here
        pending.seen_on_disk = True
        if pending.checkpoint.name_step is not None:
            self._newest_step_on_disk = max(self._newest_step_on_disk, pending.checkpoint.name_step)
        self._latest_order_on_disk = max(self._latest_order_on_disk, pending.order)

    def saw_on_disk(self, pending: Pending) -> None:
        with self._lock:
            self._saw_on_disk(pending)

    # -- what to do next ----------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def all(self) -> list[Pending]:
        """Every pending checkpoint, due or not, oldest step first."""
        with self._lock:
            return sorted(self._pending.values(), key=lambda p: p.sort_key)

    def due(self) -> list[Pending]:
        """The pending checkpoints that may be tried now, oldest step first."""
        now = time.monotonic()
        with self._lock:
            return sorted((p for p in self._pending.values() if p.not_before <= now), key=lambda p: p.sort_key)

    def first_due(self, skip: set[str], newest: bool = False) -> Pending | None:
        """The oldest-step (or `newest`) pending checkpoint that may be tried now, not named in `skip`."""
        batch = self.next_batch(skip, newest, 1)
        return batch[0] if batch else None

    def next_batch(self, skip: set[str], newest: bool = False, count: int = 1) -> list[Pending]:
        """Up to `count` pending checkpoints that may be tried now, not named in `skip`, oldest step
        first (or `newest` first). Asked afresh before each batch: checkpoints found meanwhile take
        their place in step order."""
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._pending.values() if p.not_before <= now and p.checkpoint.name not in skip]
        if newest:
            return heapq.nlargest(count, due, key=lambda p: (p.checkpoint.name_step is not None,
                                                             p.checkpoint.name_step or 0, p.order))
        return heapq.nsmallest(count, due, key=lambda p: p.sort_key)

    def next_due_in(self) -> float | None:
        """Seconds until a deferred checkpoint may be tried again (None: nothing deferred)."""
        now = time.monotonic()
        with self._lock:
            waits = [p.not_before - now for p in self._pending.values() if p.not_before > now]
        return max(0.0, min(waits)) if waits else None

    def defer(self, pending: Pending, seconds: float) -> None:
        pending.not_before = time.monotonic() + seconds

    def is_missing(self, pending: Pending, *, once: bool) -> bool:
        """Whether a checkpoint whose files are not on disk now counts as missing (see the module
        docstring). With --once nothing comes back to look later, so the grace period is zero."""
        if pending.seen_on_disk:
            return True
        with self._lock:
            step = pending.checkpoint.name_step
            newer = (self._newest_step_on_disk > step if step is not None
                     else self._latest_order_on_disk > pending.order)
        return newer and (once or time.monotonic() - pending.first_seen >= self.grace)

    def waiting_for_files(self) -> list[Pending]:
        """Pending checkpoints that were listed but have never been on disk."""
        with self._lock:
            return [p for p in self._pending.values() if not p.seen_on_disk]
