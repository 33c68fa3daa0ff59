"""End to end, as a TF2 user runs it: a live Keras 3 trainer and `evaluator watch` with a TF2 task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Daemon, cli_env, run_cli, sqlite_url

pytestmark = pytest.mark.slow
KERAS = ROOT / "examples" / "keras"
TASK = f"{KERAS / 'task.py'}:TASK"


def keras_trainer(model_dir: Path, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, str(KERAS / "train.py"), str(model_dir), *args], capture_output=True,
                          text=True, env=cli_env(), timeout=300, check=True)
    return [Path(line.split(" ", 1)[1]).name for line in done.stdout.splitlines() if line.startswith("saved ")]


def test_a_live_custom_loop_with_use_ema(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db, task=TASK).start()
    daemons.append(daemon)
    daemon.wait_ready()
    saved = keras_trainer(model_dir, "--steps", "200", "--save-every", "20", "--max-to-keep", "3", "--delay", "0.2")
    rows = daemon.wait_rows(len(saved), timeout=120)
    assert daemon.stop() == 0
    # CheckpointManager names: ckpt-1, ckpt-2, ... each once. In step order, unless a read that came
    # up short (a save still being written) was retried while the next save was evaluated.
    assert sorted(r["checkpoint"] for r in rows) == sorted(saved) and len(rows) == len(saved)
    assert sorted(r["step"] for r in rows) == list(range(20, 201, 20))  # the step: the optimizer's iterations
    assert {(r["status"], r["ema_source"]) for r in rows} == {("ok", "keras")}
    report = run_cli("report", "--db", sqlite_url(db), "--last", "3")
    assert "keras" in report.stdout and "ckpt-10" in report.stdout


def test_fit_with_model_checkpoint_weight_files(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db, task=TASK).start()
    daemons.append(daemon)
    daemon.wait_ready()
    saved = keras_trainer(model_dir, "--fit", "weights.h5", "--epochs", "4")
    rows = daemon.wait_rows(4, timeout=120)
    assert daemon.stop() == 0
    assert sorted(r["checkpoint"] for r in rows) == sorted(saved)
    assert sorted(r["step"] for r in rows) == [1, 2, 3, 4] and {r["status"] for r in rows} == {"ok"}
