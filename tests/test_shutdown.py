"""shutdown: stop requests, the grace period, a second signal, real signals."""

from __future__ import annotations

import os
import signal
import time

import pytest

from evaluator.errors import Abandoned, Interrupted
from evaluator.shutdown import Shutdown


def test_grace_period_then_abandon() -> None:
    shutdown = Shutdown(grace=0.2)
    shutdown.check()  # nothing requested
    shutdown.request("SIGTERM")
    assert shutdown.requested
    shutdown.check()  # within the grace period: the evaluation may go on
    time.sleep(0.25)
    with pytest.raises(Abandoned):
        shutdown.check()


def test_a_second_request_abandons_at_once() -> None:
    shutdown = Shutdown(grace=60)
    shutdown.request("SIGTERM")
    shutdown.check()
    shutdown.request("SIGINT")
    with pytest.raises(Abandoned):
        shutdown.check()


def test_abandoned_passes_an_except_exception_guard() -> None:
    with pytest.raises(Abandoned):
        try:
            raise Abandoned("SIGTERM")
        except Exception:  # the per-checkpoint guard
            pytest.fail("Abandoned must not be caught as an Exception")


def test_real_signals_become_requests() -> None:
    shutdown = Shutdown(grace=5)
    woken: list[bool] = []
    before = signal.getsignal(signal.SIGTERM)
    with shutdown.handling_signals(on_signal=lambda: woken.append(True)):
        os.kill(os.getpid(), signal.SIGTERM)
        assert shutdown.wait(2)
    assert shutdown.signal_name == "SIGTERM" and woken == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_cuts_an_interruptible_step_short() -> None:
    """Start-up's long steps (TensorFlow's import, the build) are cut short by a signal, not waited for;
    outside them a signal is a request only, and one made before the step cuts it short at entry."""
    shutdown = Shutdown(grace=5)
    with shutdown.handling_signals(on_signal=lambda: None):
        with pytest.raises(Interrupted):
            with shutdown.interruptible():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the import: never finished
                pytest.fail("not interrupted")
        assert shutdown.requested and shutdown.signal_name == "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)  # after the step: a request, no exception
        with pytest.raises(Interrupted):
            with shutdown.interruptible():
                pytest.fail("entered after a stop request")
