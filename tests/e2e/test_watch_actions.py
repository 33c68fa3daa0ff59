"""End to end, what a user sees after `watch`: TensorBoard's event files beside the model (one point
per checkpoint and metric, across kill -9 and restarts), the best checkpoint kept, the run ending
with training, and a log that is JSON on every line (the README's jq recipe run on it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import tensorflow as tf

from tests.actions.test_summaries import points
from tests.conftest import DIGITS_TASK, ROOT, Daemon, read_rows, run_cli, sqlite_url, start_trainer, train

pytestmark = pytest.mark.slow


def expected_points(db: Path, model_dir: Path) -> list[tuple[int, str, float]]:
    rows = [r for r in read_rows(db, model_dir) if r["status"] == "ok"]
    return sorted([(r["step"], "accuracy", r["accuracy"]) for r in rows] + [(r["step"], "loss", r["loss"]) for r in rows])


def test_summaries_one_point_per_checkpoint_across_kill_and_restarts(tmp_path: Path, trained_dir: Path, db: Path,
                                                                     daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    url = sqlite_url(db)
    # Rows recorded without their points (as if the process died between the two)...
    assert run_cli("watch", str(model_dir), "--task", DIGITS_TASK, "--db", url, "--once", "--no-summaries",
                   "--keep-best", "0").returncode == 0
    assert not (model_dir / "eval").exists()
    # ...are filled in at the next start; that daemon is killed with -9 while watching.
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_event("summaries filled in from the database", points=6)
    daemon.stop(signal.SIGKILL)
    train(model_dir, steps=100, save_every=20, relative_paths=True)  # training goes on: 80, 100
    assert run_cli("watch", str(model_dir), "--task", DIGITS_TASK, "--db", url, "--once").returncode == 0
    assert run_cli("watch", str(model_dir), "--task", DIGITS_TASK, "--db", url, "--once").returncode == 0
    found = points(model_dir / "eval")
    assert [(s, t) for s, t, _ in found] == sorted(set((s, t) for s, t, _ in found))  # no point twice
    expected = expected_points(db, model_dir)
    assert [(s, t) for s, t, _ in found] == [(s, t) for s, t, _ in expected]
    assert [v for _, _, v in found] == pytest.approx([v for _, _, v in expected], rel=1e-6)  # float32 points
    assert {s for s, _, _ in found} == {20, 40, 60, 80, 100}


def test_the_best_checkpoint_is_kept_and_found_by_latest_checkpoint(tmp_path: Path, db: Path) -> None:
    model_dir = tmp_path / "model"
    train(model_dir, steps=100, save_every=20, max_to_keep=2)  # only 80 and 100 are left on disk...
    done = run_cli("watch", str(model_dir), "--task", DIGITS_TASK, "--db", sqlite_url(db), "--once",
                   "--export", "savedmodel")
    assert done.returncode in (0, 3), done.stderr
    rows = [r for r in read_rows(db, model_dir) if r["status"] == "ok"]
    best = max(rows, key=lambda r: (r["accuracy"], -r["step"]))
    export = model_dir / "export" / "best"
    assert tf.train.latest_checkpoint(str(export)) == str(export / best["checkpoint"])
    assert (export / "savedmodel" / str(best["step"]) / "saved_model.pb").is_file()
    report = run_cli("report", "--db", sqlite_url(db), "--best", "--format", "json")
    assert [r["checkpoint"] for r in json.loads(report.stdout)] == [best["checkpoint"]]


def test_until_step_ends_the_run_after_that_step(tmp_path: Path, trained_dir: Path, db: Path,
                                                 daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db, "--until-step", "40").start()
    daemons.append(daemon)
    assert daemon.process is not None and daemon.process.wait(timeout=120) == 0
    daemon.stop()
    assert [r["step"] for r in read_rows(db, model_dir)] == [20, 40]
    (over,) = [e for e in daemon.events() if e["event"] == "training is over; stopping"]
    assert "--until-step 40" in over["reason"]
    (left,) = [e for e in daemon.events() if e["event"] == "checkpoints left without a row at --until-step"]
    assert (left["count"], left["first"], left["last"]) == (1, "model.ckpt-60", "model.ckpt-60")


def test_until_step_names_the_checkpoints_it_leaves(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    """Steps 10..100 on disk, --until-step 30: 30 ends the run, and the log says which of the
    others got no row (a count, the first and the last), so none of them looks lost."""
    model_dir = tmp_path / "model"
    train(model_dir, steps=100, save_every=10, max_to_keep=20)
    daemon = Daemon(model_dir, db, "--until-step", "30").start()
    daemons.append(daemon)
    assert daemon.process is not None and daemon.process.wait(timeout=120) == 0
    daemon.stop()
    assert [r["step"] for r in read_rows(db, model_dir)] == [10, 20, 30]
    (left,) = [e for e in daemon.events() if e["event"] == "checkpoints left without a row at --until-step"]
    assert (left["count"], left["first"], left["last"], left["until_step"]) == (7, "model.ckpt-40", "model.ckpt-100", 30)
    assert left["level"] == "warning"


def test_idle_timeout_counts_from_the_directory_appearing(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    """--wait-for-dir --idle-timeout 4s, and training creates the directory 8 s later: the idle
    clock starts then, so its checkpoints are evaluated (it used to exit 0 with no rows)."""
    model_dir = tmp_path / "later" / "model"
    daemon = Daemon(model_dir, db, "--wait-for-dir", "--idle-timeout", "4s").start()
    daemons.append(daemon)
    daemon.wait_ready()
    time.sleep(8)
    assert daemon.process is not None and daemon.process.poll() is None, daemon.log_text()[-2000:]
    staged = tmp_path / "staged"
    train(staged, steps=40, save_every=20, relative_paths=True)
    model_dir.parent.mkdir(parents=True)
    staged.rename(model_dir)
    assert daemon.process.wait(timeout=90) == 0
    daemon.stop()
    assert [r["step"] for r in read_rows(db, model_dir)] == [20, 40]
    over = next(e for e in daemon.events() if e["event"] == "training is over; stopping")
    assert "--idle-timeout 4 s" in over["reason"]


def test_idle_timeout_fires_after_the_directory_is_deleted(tmp_path: Path, trained_dir: Path, db: Path,
                                                          daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db, "--idle-timeout", "3s").start()
    daemons.append(daemon)
    daemon.wait_rows(3)
    shutil.rmtree(model_dir)
    assert daemon.process is not None and daemon.process.wait(timeout=30) == 0
    daemon.stop()
    assert any(e["event"] == "training is over; stopping" for e in daemon.events())


def test_model_dir_and_database_deleted_while_watching_exit_75(tmp_path: Path, trained_dir: Path,
                                                              daemons: list[Daemon]) -> None:
    """Both gone at once: the loop that waits for the directory notices the database file went too
    and exits 75 within seconds (the README's promise), instead of waiting forever."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    db = tmp_path / "state" / "evaluations.db"
    daemon = Daemon(model_dir, db, "--idle-timeout", "1h", log_path=tmp_path / "watch.log").start()
    daemons.append(daemon)
    daemon.wait_rows(3)
    time.sleep(3)  # idle: the connection is released
    shutil.rmtree(model_dir)
    shutil.rmtree(db.parent)
    gone = time.monotonic()
    assert daemon.process is not None and daemon.process.wait(timeout=30) == 75
    assert time.monotonic() - gone < 15
    daemon.stop()
    exiting = [e for e in daemon.events() if e["event"] == "exiting to be restarted"]
    assert len(exiting) == 1 and "was deleted while watching" in exiting[0]["error"]


def test_idle_timeout_ends_a_quiet_run(tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db, "--idle-timeout", "3s").start()
    daemons.append(daemon)
    daemon.wait_rows(3)
    quiet_since = time.monotonic()
    assert daemon.process is not None and daemon.process.wait(timeout=60) == 0
    assert time.monotonic() - quiet_since >= 2.0
    daemon.stop()
    assert "--idle-timeout 3 s" in next(e for e in daemon.events() if e["event"] == "training is over; stopping")["reason"]


def test_done_file_evaluates_what_is_pending_then_ends(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    daemon = Daemon(model_dir, db, "--wait-for-dir", "--done-file", "DONE").start()
    daemons.append(daemon)
    daemon.wait_ready()
    trainer = start_trainer(model_dir, "--steps", "200", "--save-every", "20", "--max-to-keep", "20")
    assert trainer.wait(timeout=120) == 0
    (model_dir / "DONE").touch()
    assert daemon.process is not None and daemon.process.wait(timeout=120) == 0
    daemon.stop()
    assert [r["step"] for r in read_rows(db, model_dir)] == list(range(20, 201, 20))
    assert any(e["event"] == "training is over; stopping" for e in daemon.events())


def readme_jq_recipe() -> str:
    """The filter of the README's `journalctl ... | jq` line."""
    line = next(line for line in (ROOT / "README.md").read_text().splitlines()
                if "journalctl" in line and "| jq" in line)
    return re.search(r"jq -c '([^']+)'", line).group(1)  # type: ignore[union-attr]


def test_json_logs_are_json_on_every_line_and_the_readme_jq_recipe_works(tmp_path: Path, trained_dir: Path,
                                                                       db: Path) -> None:
    """TensorFlow's own C++ lines included (they are written to file descriptor 2 by C++ code)."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")  # TensorFlow at its chattiest
    env.pop("EVALUATOR_DB", None)
    done = run_cli("watch", str(model_dir), "--task", DIGITS_TASK, "--db", sqlite_url(db), "--once",
                   "--log-format", "json", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every single line
    assert "NaN" not in done.stderr
    native = [e for e in events if e["logger"] == "native"]
    assert native and all(e["level"] in ("debug", "info", "warning", "error", "critical") for e in native)
    if shutil.which("jq") is None:
        if os.environ.get("EVALUATOR_REQUIRE_JQ"):
            raise AssertionError("jq is not installed (.ci/run installs it)")
        pytest.skip("jq is not installed")
    log = tmp_path / "watch.log"
    log.write_text(done.stderr)
    result = subprocess.run(["jq", "-c", readme_jq_recipe()], stdin=log.open(), capture_output=True, text=True,
                            check=True)
    picked = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["step"] for p in picked] == [20, 40, 60] and {p["status"] for p in picked} == {"ok"}
    assert [p["accuracy"] for p in picked] == pytest.approx([r["accuracy"] for r in read_rows(db, model_dir)], abs=1e-6)
