"""Pinned on sight, through the CLI: behind a trainer that saves every step and keeps two, every
checkpoint gets an `ok` row; started together with training, nothing written during TensorFlow's
start-up is lost; a restart evaluates what was pinned before it."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import Daemon, read_rows, saved_by, slow_task, start_trainer, wait_for

pytestmark = pytest.mark.slow


def pins(model_dir: Path) -> list[str]:
    return sorted(p.name for p in (model_dir / ".evaluator" / "pins" / "default").glob("*.index"))


def test_a_trainer_saving_every_step_and_keeping_two_loses_nothing(tmp_path: Path, db: Path,
                                                                  daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db, "--log-level", "debug").start()
    daemons.append(daemon)
    daemon.wait_ready()
    # Each checkpoint lives two saves, 60 ms or so: a loaded test machine's watcher thread takes tens
    # of milliseconds at worst to see an index (the benchmark measures the bare every-step case).
    trainer = start_trainer(model_dir, "--steps", "200", "--save-every", "1", "--max-to-keep", "2", "--delay", "0.03")
    saved = saved_by(trainer, timeout=180)
    assert len(saved) == 200
    rows = daemon.wait_rows(200, timeout=240)
    assert daemon.stop() == 0
    assert {r["status"] for r in rows} == {"ok"} and sorted(r["step"] for r in rows) == list(range(1, 201))
    assert len(list(model_dir.glob("model.ckpt-*.index"))) == 2  # training kept two; the rest came from pins
    assert pins(model_dir) == []  # each let go with its row


def test_started_together_with_training_nothing_is_lost(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    """The README's order ("start it first: it waits"), at the same moment: the watch and the pins
    are in place before TensorFlow loads, so what training saves and rotates meanwhile is kept."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    trainer = start_trainer(model_dir, "--steps", "30", "--save-every", "1", "--max-to-keep", "2", "--delay", "0.03")
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    assert len(saved_by(trainer, timeout=180)) == 30
    rows = daemon.wait_rows(30, timeout=180)
    assert daemon.stop() == 0
    assert {r["status"] for r in rows} == {"ok"} and sorted(r["step"] for r in rows) == list(range(1, 31))


def test_a_restart_evaluates_what_was_pinned_before_it(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    task = slow_task(tmp_path, seconds_per_batch=0.5, batches=2)  # 1 s per checkpoint: far behind
    first = Daemon(model_dir, db, task=task).start()
    daemons.append(first)
    first.wait_ready()
    trainer = start_trainer(model_dir, "--steps", "20", "--save-every", "1", "--max-to-keep", "2", "--delay", "0.03")
    assert len(saved_by(trainer, timeout=180)) == 20
    wait_for(lambda: read_rows(db), timeout=60, message="a first row")
    first.stop(signal.SIGKILL)  # a crash: what it had pinned stays pinned
    left = pins(model_dir)
    assert left, "nothing was left pinned: the test proves nothing"
    again = Daemon(model_dir, db, "--once").start()
    daemons.append(again)
    assert again.process is not None and again.process.wait(timeout=180) == 0
    rows = read_rows(db)
    assert {r["status"] for r in rows} == {"ok"} and sorted(r["step"] for r in rows) == list(range(1, 21))
    assert pins(model_dir) == []


def test_polling_pins_what_lives_one_interval(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    """NFS (--poll): each checkpoint lives two saves (0.5 s), longer than the interval (0.2 s), so the
    look that sees it pins it, and every one gets an `ok` row though training keeps two."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db, "--poll", "--poll-interval", "0.2").start()
    daemons.append(daemon)
    daemon.wait_ready()
    trainer = start_trainer(model_dir, "--steps", "40", "--save-every", "1", "--max-to-keep", "2", "--delay", "0.25")
    assert len(saved_by(trainer, timeout=180)) == 40
    rows = daemon.wait_rows(40, timeout=120)
    assert daemon.stop() == 0
    assert {r["status"] for r in rows} == {"ok"} and sorted(r["step"] for r in rows) == list(range(1, 41))
