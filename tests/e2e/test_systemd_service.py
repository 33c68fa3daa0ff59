"""`evaluator watch` as systemd runs it: the notify protocol and shutdown, with a real subprocess.

The test owns the $NOTIFY_SOCKET datagram socket and plays the service manager.
"""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    DIGITS_TASK,
    Daemon,
    cli_env,
    error_lines,
    read_rows,
    run_cli,
    slow_task,
    sqlite_url,
    wait_for,
)

pytestmark = pytest.mark.slow


class ServiceManager:
    """Collects sd_notify datagrams with the time they arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def env(self, watchdog_seconds: float | None = None) -> dict[str, str]:
        extra = {"NOTIFY_SOCKET": str(self.path)}
        if watchdog_seconds:
            extra["WATCHDOG_USEC"] = str(int(watchdog_seconds * 1_000_000))
        return cli_env(**extra)

    def lines(self) -> list[str]:
        return [line for _, line in self.messages]

    def first(self, prefix: str, timeout: float = 90, after: float = 0.0) -> float:
        """When the first message starting with `prefix` arrived after `after` (waits for it)."""
        def find() -> float | None:
            return next((at for at, line in self.messages if line.startswith(prefix) and at > after), None)
        return wait_for(find, timeout=timeout, message=f"notify {prefix!r}")

    def count(self, line: str, start: float = 0.0, end: float = float("inf")) -> int:
        return sum(1 for at, text in self.messages if text == line and start <= at <= end)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ServiceManager]:
    sm = ServiceManager(tmp_path / "notify.sock")
    yield sm
    sm.close()


@pytest.fixture
def model_dir(tmp_path: Path, trained_dir: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(trained_dir, copy)
    return copy


def test_ready_watchdog_status_stopping(tmp_path: Path, model_dir: Path, db: Path, manager: ServiceManager,
                                        daemons: list[Daemon]) -> None:
    task = slow_task(tmp_path, seconds_per_batch=0.3, batches=8)  # ~2.4 s per checkpoint
    daemon = Daemon(model_dir, db, task=task, env=manager.env(watchdog_seconds=1.0)).start()
    daemons.append(daemon)

    ready = manager.first("READY=1")
    assert "evaluation model built" in daemon.log_text()  # READY only once the graph is built
    assert "database ready" in daemon.log_text()

    started = manager.first("STATUS=evaluating model.ckpt-20")
    finished = manager.first("STATUS=watching", timeout=60, after=started)
    assert ready < started < finished
    assert finished - started > 2.0
    assert manager.count("WATCHDOG=1", started, finished) >= 3  # pings during a long evaluation

    manager.first("STATUS=watching " + str(model_dir.resolve()) + ", last step 60 acc", timeout=60)
    idle_from = time.monotonic()
    wait_for(lambda: manager.count("WATCHDOG=1", idle_from) >= 2, timeout=5, message="pings while idle")

    assert daemon.stop(signal.SIGTERM) == 0
    assert "STOPPING=1" in manager.lines()
    assert len(read_rows(db)) == 3


def test_sigterm_mid_evaluation_abandons_without_a_partial_row(tmp_path: Path, model_dir: Path, db: Path,
                                                                manager: ServiceManager,
                                                                daemons: list[Daemon]) -> None:
    task = slow_task(tmp_path, seconds_per_batch=1.0, batches=30)  # 30 s per checkpoint
    daemon = Daemon(model_dir, db, "--stop-grace", "0", task=task, env=manager.env()).start()
    daemons.append(daemon)
    manager.first("STATUS=evaluating model.ckpt-20")
    time.sleep(1.5)
    sent = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - sent < 10  # abandoned at the next batch, not after 30 s
    assert read_rows(db) == []  # no partial row
    assert any(e["event"].startswith("evaluation abandoned") and e["checkpoint"] == "model.ckpt-20"
               for e in daemon.events())
    assert "STOPPING=1" in manager.lines()

    again = Daemon(model_dir, db, "--once").start()  # the next start evaluates it, exactly once
    daemons.append(again)
    assert again.process is not None and again.process.wait(timeout=120) == 0
    rows = read_rows(db)
    assert [r["checkpoint"] for r in rows] == ["model.ckpt-20", "model.ckpt-40", "model.ckpt-60"]


def test_sigterm_lets_a_short_evaluation_finish(tmp_path: Path, model_dir: Path, db: Path,
                                                manager: ServiceManager, daemons: list[Daemon]) -> None:
    task = slow_task(tmp_path, seconds_per_batch=0.4, batches=8)  # ~3 s, within the 30 s grace
    daemon = Daemon(model_dir, db, "--stop-grace", "30", task=task, env=manager.env()).start()
    daemons.append(daemon)
    manager.first("STATUS=evaluating model.ckpt-20")
    assert daemon.stop(signal.SIGTERM) == 0
    rows = read_rows(db)
    assert [(r["checkpoint"], r["status"]) for r in rows] == [("model.ckpt-20", "ok")]  # finished, then stopped
    assert rows[0]["examples"] == 360


def test_a_second_signal_abandons_at_once(tmp_path: Path, model_dir: Path, db: Path,
                                          manager: ServiceManager, daemons: list[Daemon]) -> None:
    task = slow_task(tmp_path, seconds_per_batch=1.0, batches=30)
    daemon = Daemon(model_dir, db, "--stop-grace", "600", task=task, env=manager.env()).start()
    daemons.append(daemon)
    manager.first("STATUS=evaluating model.ckpt-20")
    daemon.send(signal.SIGTERM)
    time.sleep(1.5)
    assert daemon.process is not None and daemon.process.poll() is None  # still finishing, within grace
    daemon.send(signal.SIGINT)  # Ctrl-C again: stop now
    assert daemon.stop(timeout=15) == 0
    assert read_rows(db) == []


def test_configuration_errors_exit_with_the_no_restart_code(tmp_path: Path, model_dir: Path,
                                                            manager: ServiceManager) -> None:
    """Exit status 2 is the unit's RestartPreventExitStatus: a misconfiguration is not restarted."""
    db = sqlite_url(tmp_path / "x.db")
    for args in (["--task", "missing.py:TASK", "--db", db], ["--task", DIGITS_TASK, "--db", "nosuch://db"]):
        result = run_cli("watch", str(model_dir), *args, env=manager.env())
        assert result.returncode == 2
        assert len(error_lines(result.stderr)) == 1
    assert "READY=1" not in manager.lines()
