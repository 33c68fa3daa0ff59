"""service: the loop in process (once mode): exactly once, missing, failed, bad state files."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from evaluator import log
from evaluator.errors import EXIT_INCOMPLETE, DatabaseError, ModelDirError, TaskError
from evaluator.options import WatchOptions
from evaluator.service import Service
from tests.conftest import DIGITS_TASK, read_rows, sqlite_url, train


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    log.configure("json", "info", stream=out)
    yield out
    structlog.reset_defaults()


def events(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def once(model_dir: Path, db: Path, **options: Any) -> int:
    opts = WatchOptions(model_dir=str(model_dir), task=DIGITS_TASK, db_url=sqlite_url(db), once=True,
                        device="cpu", **options)
    return Service(opts).run()


@pytest.fixture
def model_dir(tmp_path: Path, trained_dir: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(trained_dir, copy)
    return copy


def test_every_listed_checkpoint_once_oldest_first(model_dir: Path, db: Path, logs: io.StringIO) -> None:
    assert once(model_dir, db) == 0
    rows = read_rows(db, model_dir)
    assert [(r["checkpoint"], r["step"], r["status"]) for r in rows] == [
        ("model.ckpt-20", 20, "ok"), ("model.ckpt-40", 40, "ok"), ("model.ckpt-60", 60, "ok")]
    assert all(r["ema_source"] == "tf1-names" and r["examples"] == 360 and 0 < r["accuracy"] <= 1 for r in rows)
    assert all(r["detected_at"] <= r["started_at"] <= r["evaluated_at"] for r in rows)
    evaluated = [e for e in events(logs) if e["event"] == "evaluated"]
    assert [e["step"] for e in evaluated] == [20, 40, 60]
    assert {"model_dir", "checkpoint", "accuracy", "loss", "eval_seconds", "restore_seconds"} <= set(evaluated[0])


def test_a_second_run_evaluates_only_what_is_new(model_dir: Path, db: Path, logs: io.StringIO) -> None:
    once(model_dir, db)
    first = read_rows(db)
    train(model_dir, steps=80, save_every=80, relative_paths=True, max_to_keep=10, seed=3)
    once(model_dir, db)
    rows = read_rows(db)
    assert rows[:3] == first  # nothing re-evaluated, nothing rewritten
    assert [r["checkpoint"] for r in rows[3:]] == ["model.ckpt-80"]


def test_missing_and_failed_checkpoints_do_not_stop_the_loop(model_dir: Path, db: Path, logs: io.StringIO) -> None:
    for path in model_dir.glob("model.ckpt-20.*"):
        path.unlink()  # deleted by max_to_keep before we read it
    data = model_dir / "model.ckpt-40.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:10])  # truncated
    assert once(model_dir, db) == EXIT_INCOMPLETE  # a failed row: cron should hear of it
    rows = {r["checkpoint"]: r for r in read_rows(db)}
    assert rows["model.ckpt-20"]["status"] == "missing" and rows["model.ckpt-20"]["step"] == 20
    assert "never appeared on disk while newer checkpoints did" in rows["model.ckpt-20"]["error"]
    assert rows["model.ckpt-40"]["status"] == "failed" and "cannot restore model.ckpt-40" in rows["model.ckpt-40"]["error"]
    assert rows["model.ckpt-60"]["status"] == "ok"
    assert once(model_dir, db) == 0
    assert len(read_rows(db)) == 3  # failed and missing rows are final: no retry loop


def test_a_path_to_nothing_waits_until_a_newer_checkpoint_is_there(tmp_path: Path, trained_dir: Path, db: Path,
                                                                    logs: io.StringIO) -> None:
    """Not on disk yet is not deleted: no row while nothing newer exists (a copy may be bringing it)."""
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-999"\n')
    assert once(tmp_path, db) == EXIT_INCOMPLETE
    assert read_rows(db) == []
    waiting = next(e for e in events(logs) if e["event"] == "--once done, but not everything was evaluated")
    assert waiting["listed checkpoints not on disk"] == ["model.ckpt-999"]
    for path in trained_dir.glob("model.ckpt-60.*"):
        shutil.copy(path, tmp_path / path.name.replace("ckpt-60", "ckpt-1000"))
    (tmp_path / "checkpoint").write_text('all_model_checkpoint_paths: "model.ckpt-999"\n'
                                         'model_checkpoint_path: "model.ckpt-1000"\n')
    assert once(tmp_path, db) == 0
    rows = {r["checkpoint"]: r for r in read_rows(db)}
    assert rows["model.ckpt-999"]["status"] == "missing" and rows["model.ckpt-1000"]["status"] == "ok"
    assert "never appeared on disk while newer checkpoints did" in rows["model.ckpt-999"]["error"]


def test_garbage_state_file_is_a_warning(model_dir: Path, db: Path, logs: io.StringIO) -> None:
    (model_dir / "checkpoint").write_bytes(b"\x00\x01 not a proto {{{")
    assert once(model_dir, db) == EXIT_INCOMPLETE
    assert read_rows(db) == []
    warning = next(e for e in events(logs) if e["event"] == "state file unreadable; waiting for a valid one")
    assert warning["level"] == "warning" and "cannot parse" in warning["error"]


def test_paths_outside_are_logged_and_skipped(model_dir: Path, db: Path, logs: io.StringIO) -> None:
    state = model_dir / "checkpoint"
    state.write_text(state.read_text() + 'all_model_checkpoint_paths: "/etc/passwd"\n')
    once(model_dir, db)
    assert len(read_rows(db)) == 3
    assert any(e["event"].startswith("state file lists a path outside") and e["path"] == "/etc/passwd"
               for e in events(logs))


def test_no_ema_is_recorded(model_dir: Path, db: Path, logs: io.StringIO) -> None:
    once(model_dir, db, ema=False)
    assert {r["ema_source"] for r in read_rows(db)} == {"none"}


def test_configuration_errors(tmp_path: Path, model_dir: Path, db: Path, logs: io.StringIO) -> None:
    with pytest.raises(ModelDirError, match="does not exist .*--wait-for-dir"):
        once(tmp_path / "nope", db)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelDirError, match="is not a directory"):
        once(tmp_path / "file", db)
    with pytest.raises(TaskError):
        Service(WatchOptions(model_dir=str(model_dir), task="nope.py:X", db_url=sqlite_url(db), once=True)).run()
    with pytest.raises(DatabaseError):
        Service(WatchOptions(model_dir=str(model_dir), task=DIGITS_TASK, db_url="bad url", once=True)).run()
    assert read_rows(db) == []


def train_with_checkpoint_manager(model_dir: Path, saves: tuple[int, ...], numbered: bool = True) -> None:
    """The digits network with EMA, saved by tf.train.CheckpointManager (object-based, relative paths);
    not `numbered`, the names count saves (ckpt-1, ckpt-2…) as the manager's own counter does."""
    import sys

    import numpy as np
    import tensorflow as tf

    from tests.conftest import DIGITS

    sys.path.insert(0, str(DIGITS))
    import digits_data
    import digits_model

    v1 = tf.compat.v1
    images, labels = digits_data.training()
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 64])
        y = v1.placeholder(tf.int64, [None])
        step = v1.train.get_or_create_global_step()
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=digits_model.inference(x)))
        minimize = v1.train.GradientDescentOptimizer(0.3).minimize(loss, global_step=step)
        with tf.control_dependencies([minimize]):
            train_op = v1.train.ExponentialMovingAverage(0.9, step).apply(v1.trainable_variables())
        tracked = v1.train.Checkpoint(**{v.op.name.replace("/", "_"): v for v in v1.global_variables()})
        manager = tf.train.CheckpointManager(tracked, str(model_dir), max_to_keep=5)
        with v1.Session(graph=graph) as session, session.as_default():
            session.run(v1.global_variables_initializer())
            rng = np.random.default_rng(0)
            for number in range(1, max(saves) + 1):
                batch = rng.integers(0, len(labels), 64)
                session.run(train_op, {x: images[batch], y: labels[batch]})
                if number in saves:
                    manager.save(checkpoint_number=number if numbered else None)


def test_a_checkpoint_manager_directory(tmp_path: Path, db: Path, logs: io.StringIO) -> None:
    model_dir = tmp_path / "managed"
    train_with_checkpoint_manager(model_dir, saves=(10, 20, 30))
    assert 'model_checkpoint_path: "ckpt-30"' in (model_dir / "checkpoint").read_text()
    once(model_dir, db)
    rows = read_rows(db)
    assert [(r["checkpoint"], r["step"], r["status"], r["ema_source"]) for r in rows] == [
        ("ckpt-10", 10, "ok", "tf1-names"), ("ckpt-20", 20, "ok", "tf1-names"), ("ckpt-30", 30, "ok", "tf1-names")]


def test_the_log_does_not_take_a_name_for_the_step(tmp_path: Path, db: Path, logs: io.StringIO) -> None:
    """Names counting saves (ckpt-1…) while the global step is 10, 20, 30: the rows and the
    `evaluated` lines carry the global step; the `detected` lines call the name's number name_step."""
    model_dir = tmp_path / "managed"
    train_with_checkpoint_manager(model_dir, saves=(10, 20, 30), numbered=False)
    once(model_dir, db)
    assert [(r["checkpoint"], r["step"]) for r in read_rows(db)] == [("ckpt-1", 10), ("ckpt-2", 20), ("ckpt-3", 30)]
    said = events(logs)
    detected = [(e["checkpoint"], e["name_step"]) for e in said if e["event"] == "checkpoint detected"]
    assert detected == [("ckpt-1", 1), ("ckpt-2", 2), ("ckpt-3", 3)]
    assert not any("step" in e for e in said if e["event"] == "checkpoint detected")
    assert [(e["checkpoint"], e["step"]) for e in said if e["event"] == "evaluated"] == [
        ("ckpt-1", 10), ("ckpt-2", 20), ("ckpt-3", 30)]


def test_the_log_says_only_what_this_evaluator_recorded(model_dir: Path, db: Path, logs: io.StringIO,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool: another evaluator recorded model.ckpt-20 and -40 `ok` after this one read the rows
    (Store.recorded answers as it did before those rows existed), and training deleted their files
    since. This one finds them gone, but its `missing` rows are not written, so its log must not
    say `evaluated … missing` for them: the log says what the database holds."""
    from datetime import datetime, timezone

    from evaluator.evaluation import Evaluation, Status
    from evaluator.store import Store

    directory = str(model_dir.resolve())
    with Store.open(sqlite_url(db), create=True) as store:
        store.upgrade()
        for step in (20, 40):
            store.record(Evaluation(directory, f"model.ckpt-{step}", step, Status.OK, datetime.now(timezone.utc),
                                    fingerprint="theirs", accuracy=0.9, loss=0.3, examples=360))
    for path in model_dir.glob("model.ckpt-[24]0.*"):
        path.unlink()
    monkeypatch.setattr(Store, "recorded", lambda self, model_dir, name: {})
    assert once(model_dir, db) == 0
    rows = read_rows(db, model_dir)
    assert [(r["checkpoint"], r["status"]) for r in rows] == [
        ("model.ckpt-20", "ok"), ("model.ckpt-40", "ok"), ("model.ckpt-60", "ok")]
    said = [(e["checkpoint"], e["status"]) for e in events(logs) if e["event"] == "evaluated"]
    assert said == [("model.ckpt-60", "ok")]
    assert not any(e["event"] == "checkpoints missing" for e in events(logs))
