"""Faults of the process and its directory: kill -9, the model directory missing or replaced."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import Daemon, read_rows, slow_task, train, wait_for

pytestmark = pytest.mark.slow


def test_kill_9_mid_evaluation(tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon],
                               record_property: Callable[[str, object], None]) -> None:
    """Scenario 1: kill -9 in the middle of an evaluation, then restart"""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    slow = slow_task(tmp_path, seconds_per_batch=0.5, batches=12)  # 6 s per checkpoint
    first = Daemon(model_dir, db, task=slow).start()
    daemons.append(first)
    first.wait_rows(1, timeout=120)  # model.ckpt-20 done, model.ckpt-40 in progress
    time.sleep(2)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    killed_with = [r["checkpoint"] for r in read_rows(db)]
    assert killed_with == ["model.ckpt-20"]  # nothing of the evaluation in progress was written

    second = Daemon(model_dir, db).start()
    daemons.append(second)
    rows = second.wait_rows(3)
    assert second.stop() == 0
    counts = Counter(r["checkpoint"] for r in rows)
    assert counts == {"model.ckpt-20": 1, "model.ckpt-40": 1, "model.ckpt-60": 1}
    assert all(r["status"] == "ok" for r in rows)
    record_property("detail", f"killed during model.ckpt-40 with 1 row; after restart {len(rows)} rows, 1 each")


def test_model_dir_missing_at_start_then_deleted_and_recreated(
    tmp_path: Path, db: Path, daemons: list[Daemon], record_property: Callable[[str, object], None]
) -> None:
    """Scenario 5: the model directory does not exist at start, then is deleted and re-created"""
    model_dir = tmp_path / "later" / "model"
    daemon = Daemon(model_dir, db, "--wait-for-dir", "--rescan", "1").start()
    daemons.append(daemon)
    waiting = daemon.wait_event("model directory is missing; waiting for it to appear")
    assert waiting["level"] == "warning"

    train(model_dir, steps=40, save_every=20)
    daemon.wait_rows(2)
    daemon.wait_event("watching")

    shutil.rmtree(model_dir)
    wait_for(lambda: sum(e["event"] == "model directory is missing; waiting for it to appear"
                         for e in daemon.events()) >= 2, timeout=30, message="the second 'missing' line")
    train(model_dir, steps=75, save_every=25, resume=False)  # a new run in a new directory of the same name
    rows = daemon.wait_rows(5)
    assert daemon.stop() == 0
    assert [r["checkpoint"] for r in rows] == [
        "model.ckpt-20", "model.ckpt-40", "model.ckpt-25", "model.ckpt-50", "model.ckpt-75"]
    assert all(r["status"] == "ok" for r in rows)
    record_property("detail", "waited, evaluated 2, directory replaced, evaluated the 3 new ones")


@pytest.mark.parametrize("first,more", [(signal.SIGTERM, (signal.SIGTERM,)), (signal.SIGINT, (signal.SIGINT,)),
                                        (signal.SIGHUP, (signal.SIGTERM, signal.SIGINT))],
                         ids=["term", "int", "hup-term-int"])
def test_signals_during_shutdown_never_skip_the_clean_end(
        tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon], first: int, more: tuple[int, ...]) -> None:
    """A second and third signal may shorten the grace, but the process still ends with exit 0 and
    its `stopped` line: signals keep coming every few milliseconds through every phase of the end
    (closing the model, the claims, the last lines, TensorFlow's teardown at exit)."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_rows(3)
    assert daemon.process is not None
    daemon.send(first)
    deadline = time.monotonic() + 60
    sent = 0
    while daemon.process.poll() is None and time.monotonic() < deadline:
        for sig in more:
            daemon.send(sig)
            sent += 1
        time.sleep(0.005)
    assert sent >= 2
    assert daemon.stop() == 0, daemon.log_text()[-2000:]
    events = [e["event"] for e in daemon.events()]
    assert "stopping" in events and events[-1] == "stopped", events[-5:]


def test_a_deleted_model_directory_is_waited_for_without_spinning(tmp_path: Path, trained_dir: Path, db: Path,
                                                                  daemons: list[Daemon]) -> None:
    """The directory deleted while watching: `watch` waits for it (a look a second), it does not
    spin. (The event that said it went used to end every wait at once: a core at 100 % for as long
    as the directory stayed away.) Deleted as soon as the rows are there, while the best is still
    being kept: the evaluator's outputs do not bring the directory back (they used to: export/best
    made again, and with it a model directory that never went "missing")."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_rows(3)
    # What a user's `rm -rf` does while files are being written into it: again until it is gone.
    wait_for(lambda: shutil.rmtree(model_dir, ignore_errors=True) or not model_dir.exists(), timeout=10,
             message="the model directory removed")
    daemon.wait_event("model directory is missing; waiting for it to appear", timeout=30)
    assert not model_dir.exists()
    assert daemon.process is not None
    stat = Path(f"/proc/{daemon.process.pid}/stat")

    def cpu() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu()
    time.sleep(6)
    assert cpu() - before < 1.5, f"{cpu() - before:.1f} s of CPU in 6 s while waiting for the directory"
    assert not model_dir.exists()
    assert daemon.stop() == 0
    assert not model_dir.exists()
