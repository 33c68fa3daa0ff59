"""watcher: real file-system events from real TensorFlow saves, inotify and polling."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluator.sources.watcher import Watcher
from tests.conftest import train, wait_for


class Calls:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.count += 1


@pytest.fixture(params=["inotify", "poll"])
def watched(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Watcher, Calls, Path]]:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    calls = Calls()
    watcher = Watcher(str(model_dir), calls, poll=request.param == "poll", poll_interval=0.1)
    assert watcher.start()
    yield watcher, calls, model_dir
    watcher.stop()


def test_a_tensorflow_save_wakes_it(watched: tuple[Watcher, Calls, Path]) -> None:
    _, calls, model_dir = watched
    train(model_dir, steps=20, save_every=20)
    wait_for(lambda: calls.count >= 1, timeout=10, message="a call after a save")


def test_reading_the_state_file_does_not_wake_it(watched: tuple[Watcher, Calls, Path]) -> None:
    _, calls, model_dir = watched
    train(model_dir, steps=20, save_every=20)
    wait_for(lambda: calls.count >= 1, timeout=10)
    settled = calls.count
    for _ in range(20):
        (model_dir / "checkpoint").read_text()
    threading.Event().wait(0.5)
    assert calls.count == settled


def test_other_files_do_not_wake_it(watched: tuple[Watcher, Calls, Path]) -> None:
    _, calls, model_dir = watched
    (model_dir / "events.out.tfevents.1").write_bytes(b"x" * 1000)
    (model_dir / "checkpoint.tmp1234").write_text("x")
    threading.Event().wait(0.5)
    assert calls.count == 0
    (model_dir / "checkpoint.tmp1234").rename(model_dir / "checkpoint")  # how TensorFlow writes it
    wait_for(lambda: calls.count >= 1, timeout=10, message="a call after the rename")


def test_survives_the_directory_being_replaced(watched: tuple[Watcher, Calls, Path]) -> None:
    watcher, calls, model_dir = watched
    shutil.rmtree(model_dir)
    wait_for(lambda: not watcher.ensure(), timeout=5)
    model_dir.mkdir()
    assert watcher.ensure()
    before = calls.count
    train(model_dir, steps=20, save_every=20)
    wait_for(lambda: calls.count > before, timeout=10, message="a call in the new directory")


def test_a_directory_that_does_not_exist_yet(tmp_path: Path) -> None:
    watcher = Watcher(str(tmp_path / "later"), Calls())
    assert watcher.start() is False
    (tmp_path / "later").mkdir()
    assert watcher.ensure() is True
    watcher.stop()


def test_a_failing_callback_does_not_end_the_observer(tmp_path: Path) -> None:
    calls = Calls()

    def flaky() -> None:
        calls()
        if calls.count == 1:
            raise RuntimeError("first call fails")

    watcher = Watcher(str(tmp_path), flaky)
    watcher.start()
    try:
        (tmp_path / "checkpoint").write_text("a")
        wait_for(lambda: calls.count >= 1, timeout=5)
        (tmp_path / "checkpoint").write_text("b")
        wait_for(lambda: calls.count >= 2, timeout=5, message="events after a failing call")
    finally:
        watcher.stop()
