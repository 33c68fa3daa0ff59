"""Who this evaluator is in the `claims` table, and the heartbeat that keeps its claims alive.

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

import structlog

from evaluator.errors import EvaluatorError
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
    """Renews `owner`'s claims every lease/3 seconds while `holding` is set, until stopped."""

    def __init__(self, store: Store, owner: str, lease: float) -> None:
        self._store = store
        self._owner = owner
        self._lease = lease
        #: Set while the process holds a claim (idle, it writes nothing).
        self.holding = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evaluator-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._lease / 3):
            if not self.holding.is_set():
                continue
            try:
                self._store.renew(self._owner, self._lease)
            except EvaluatorError as err:  # the loop's own write will say more; keep beating
                _log.warning("cannot renew claims; will retry", error=str(err))
