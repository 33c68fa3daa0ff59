"""Stop requests from SIGTERM / SIGINT / SIGHUP, and the grace period an evaluation in progress gets.

The first signal asks the loop to stop: it starts no new checkpoint, and the one in progress may
finish if it does so within the grace period, else it is abandoned (no row is written, so the
next start evaluates it). A second signal abandons it at once. The handler only sets flags; the
loop does the logging. In the `watch` process the signals stay caught until it exits: one during
the clean end (closing the model, releasing claims, the last log lines) is one more request, and
one after it (TensorFlow's teardown at exit takes a while) is ignored, never the default action
that kills the process with 128+N and no `stopped` line.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from evaluator.errors import Abandoned, Interrupted

#: SIGHUP too: a closed terminal or a supervisor's hang-up stops it as cleanly as SIGTERM.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Shutdown:
    """A stop request, and when the evaluation in progress must be dropped."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.event = threading.Event()
        self.signal_name: str | None = None
        self._deadline: float | None = None
        #: Inside `interruptible`: a signal raises Interrupted as well.
        self._interruptible = False

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def request(self, signal_name: str = "request") -> None:
        """Ask to stop; a second request makes the deadline now."""
        now = time.monotonic()
        self._deadline = now if self.event.is_set() else now + self.grace
        self.signal_name = signal_name
        self.event.set()

    def check(self) -> None:
        """Raise Abandoned once a stop was requested and the grace period is over."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise Abandoned(self.signal_name)

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early on a stop request; returns whether one came."""
        return self.event.wait(max(0.0, seconds))

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Inside the block a stop request (one already made too) raises Interrupted in the main
        thread at once: for steps that hold nothing to clean up, which a Ctrl-C should not wait for."""
        if self.requested:
            raise Interrupted(self.signal_name)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    @contextmanager
    def handling_signals(self, on_signal: Callable[[], None], *, until_exit: bool = False) -> Iterator[None]:
        """Turn SIGTERM, SIGINT and SIGHUP into requests (and call `on_signal`) while inside the block;
        with `until_exit` (the process ends with the block), ignore them after it instead of restoring
        the previous handlers: Python's finalization resets its own handlers to the default action,
        but leaves SIG_IGN in place."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request(signal.Signals(signum).name)
            on_signal()
            if self._interruptible:
                self._interruptible = False
                raise Interrupted(signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, signal.SIG_IGN if until_exit else old)
