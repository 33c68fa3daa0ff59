"""Who this evaluator is in the `claims` and `workers` tables, and the heartbeat that keeps its
claims alive and its worker row fresh.

A claim expires `lease` seconds after its last renewal; the heartbeat renews every claim the
process holds every lease/3 seconds from a thread of its own, so a long evaluation (or a single
slow batch) keeps its claim, and a process that dies (`kill -9`, a lost machine) loses it at most
`lease` seconds later, when another evaluator may take the checkpoint over.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import replace
from datetime import datetime, timezone

import structlog

from evaluator.errors import EvaluatorError
from evaluator.evaluation import Worker
from evaluator.store import Store

#: Seconds a claim lives without a heartbeat (--lease).
DEFAULT_LEASE = 90.0

_log = structlog.get_logger("evaluator.claims")


def owner_id() -> str:
    """host:pid:random, unique to this process (the random part survives pid reuse)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def died_here(owner: str) -> bool:
    """Whether `owner` was a process on this host that no longer exists (killed, crashed): its
    claims need not wait for their expiry. Owners on other hosts are judged by expiry alone."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Heartbeat:
    """Every lease/3 seconds, until stopped: refreshes this worker's row in `workers` (what
    `evaluator workers` shows), and renews its claims while `holding` is set."""

    def __init__(self, store: Store, owner: str, lease: float, model_dirs: list[str] | None = None) -> None:
        self._store = store
        self._owner = owner
        self._lease = lease
        self.worker = Worker(owner=owner, host=socket.gethostname(), pid=os.getpid(), lease=lease,
                             model_dirs=list(model_dirs or []), started_at=datetime.now(timezone.utc))
        #: Set while the process holds a claim.
        self.holding = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evaluator-heartbeat", daemon=True)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and take this worker's row away (a crash leaves it: its heartbeat ages)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self._store.leave(self._owner)
        except EvaluatorError as err:
            _log.warning("cannot remove this worker's row; it shows as gone once its lease passes", error=str(err))

    def watching(self, model_dirs: list[str]) -> None:
        """The model directories this worker serves now (--root changes them)."""
        self.worker = replace(self.worker, model_dirs=list(model_dirs))

    def evaluating(self, path: str | None) -> None:
        """What this worker evaluates now (None: nothing), shown with the next heartbeat."""
        self.worker = replace(self.worker, evaluating=path,
                              evaluating_since=datetime.now(timezone.utc) if path else None)

    def _run(self) -> None:
        while not self._stop.wait(self._lease / 3):
            if self.holding.is_set():
                try:
                    self._store.renew(self._owner, self._lease)
                except EvaluatorError as err:  # the loop's own write will say more; keep beating
                    _log.warning("cannot renew claims; will retry", error=str(err))
            self._beat()

    def _beat(self) -> None:
        try:
            self._store.beat(self.worker)
        except EvaluatorError as err:
            _log.warning("cannot refresh this worker's heartbeat; will retry", error=str(err))
