"""notify: the sd_notify protocol over a real datagram socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluator.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_messages_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.ready("watching /m")
    notifier.status("evaluating model.ckpt-1")
    notifier.stopping()
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching /m"
    assert sock.recv(4096) == b"STATUS=evaluating model.ckpt-1"
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_abstract_socket_names() -> None:
    name = f"evaluator-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"
    finally:
        sock.close()


def test_watchdog_pings_are_rate_limited(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval == 60.0
    for _ in range(100):
        notifier.ping()
    assert sock.recv(4096) == b"WATCHDOG=1"
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_watchdog_meant_for_another_process() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "garbage"}).watchdog_interval is None


def test_silent_without_a_socket_and_when_it_is_gone(tmp_path: Path) -> None:
    quiet = Notifier({})
    assert not quiet.enabled
    quiet.ready("x")
    quiet.ping()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    gone.ready("x")  # ENOENT / ECONNREFUSED must not raise
