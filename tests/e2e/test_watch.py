"""End to end, as a user runs it: a real trainer process, a real `evaluator watch` process, the CLI.

Each test starts TensorFlow in a subprocess (several seconds), so they are marked slow. A trainer
faster than evaluation, deleting with max_to_keep, is scenario 2a of the fault suite, tests/faults/.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import (
    DIGITS_TASK,
    Daemon,
    read_rows,
    run_cli,
    saved_by,
    sqlite_url,
    start_trainer,
    train,
)

pytestmark = pytest.mark.slow


def test_once_then_report(tmp_path: Path, db: Path) -> None:
    model_dir = tmp_path / "model"
    saved = train(model_dir, steps=90, save_every=30)  # absolute paths in the state file
    result = run_cli("watch", str(model_dir), "--task", DIGITS_TASK, "--db", sqlite_url(db), "--once",
                     "--log-format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # logs go to stderr
    report = run_cli("report", "--db", sqlite_url(db), "--format", "json")
    rows = json.loads(report.stdout)
    assert [(r["checkpoint"], r["step"], r["status"]) for r in rows] == [
        ("model.ckpt-30", 30, "ok"), ("model.ckpt-60", 60, "ok"), ("model.ckpt-90", 90, "ok")]
    assert len(saved) == 3 and all(r["ema"] is True and r["examples"] == 360 for r in rows)
    assert sum(r["best"] for r in rows) == 1
    table = run_cli("report", "--db", sqlite_url(db), "--model-dir", str(model_dir), "--last", "2")
    assert "model.ckpt-90" in table.stdout and "model.ckpt-30" not in table.stdout and "★" in table.stdout
    csv_out = run_cli("report", "--db", sqlite_url(db), "--format", "csv").stdout.splitlines()
    assert csv_out[0].startswith("model_dir,name,checkpoint,fingerprint,step,status,accuracy") and len(csv_out) == 4


def test_watch_keeps_up_with_a_live_trainer(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_ready()
    trainer = start_trainer(model_dir, "--steps", "500", "--save-every", "50", "--delay", "0.2",
                            "--max-to-keep", "3", "--relative-paths")
    saved = saved_by(trainer)
    assert len(saved) == 10
    rows = daemon.wait_rows(10)
    assert [r["checkpoint"] for r in rows] == saved  # every checkpoint, once, in order
    assert all(r["status"] == "ok" for r in rows)
    assert [r["step"] for r in rows] == list(range(50, 501, 50))
    assert daemon.stop() == 0
    detected = [e for e in daemon.events() if e["event"] == "checkpoint detected"]
    assert sorted({e["checkpoint"] for e in detected}) == sorted(saved)


def test_restart_resumes_without_duplicates(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    train(model_dir, steps=60, save_every=20, max_to_keep=10)
    first = Daemon(model_dir, db).start()
    daemons.append(first)
    before = first.wait_rows(3)
    assert first.stop(signal.SIGINT) == 0
    train(model_dir, steps=100, save_every=20, max_to_keep=10)  # training resumes: 80 and 100
    second = Daemon(model_dir, db).start()
    daemons.append(second)
    second.wait_event("database ready", recorded=3)
    after = second.wait_rows(5)
    assert second.stop() == 0
    assert after[:3] == before  # nothing re-evaluated or rewritten
    assert [r["checkpoint"] for r in after[3:]] == ["model.ckpt-80", "model.ckpt-100"]
    assert len(read_rows(db)) == 5
    assert not [e for e in second.events() if e["event"] == "evaluated" and e["checkpoint"] in
                {r["checkpoint"] for r in before}]


def test_ctrl_c_during_start_up_does_not_wait_for_it(tmp_path: Path, trained_dir: Path, db: Path,
                                                     daemons: list[Daemon]) -> None:
    """Ctrl-C while TensorFlow loads: the start is cut short (no model built, no database made), and
    the process ends cleanly (`stopping`, what stays pinned, `stopped`; exit 0; it used to finish the start first).
    What it pinned before TensorFlow loaded stays pinned: deleted by training meanwhile, those
    checkpoints are evaluated at the next start."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_event("starting")
    daemon.send(signal.SIGINT)
    assert daemon.stop(timeout=30) == 0
    events = [e["event"] for e in daemon.events() if e.get("logger") == "evaluator"]
    assert events == ["starting", "stopping", "checkpoints stay pinned for the next start", "stopped"], events
    assert not db.exists() and "Traceback" not in daemon.log_text()
    pinned = sorted(p.name for p in (model_dir / ".evaluator" / "pins" / "default").glob("*.index"))
    assert pinned == ["model.ckpt-20.index", "model.ckpt-40.index", "model.ckpt-60.index"]
    said = next(e for e in daemon.events() if e["event"] == "checkpoints stay pinned for the next start")
    assert (said["count"], said["first"], said["last"]) == (3, "model.ckpt-20", "model.ckpt-60")
    for path in model_dir.glob("model.ckpt-[24]0.*"):
        path.unlink()  # training's max_to_keep while the evaluator was down
    result = run_cli("watch", str(model_dir), "--db", sqlite_url(db), "--task", DIGITS_TASK, "--once")
    assert result.returncode == 0, result.stderr
    assert [(r["checkpoint"], r["status"]) for r in read_rows(db)] == [
        ("model.ckpt-20", "ok"), ("model.ckpt-40", "ok"), ("model.ckpt-60", "ok")]
