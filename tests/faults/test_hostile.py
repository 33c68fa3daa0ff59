"""What a hostile environment and a careless user do: late files, task faults, the database going
away, exit codes, values that used to crash it, and the skips that used to be silent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from tests.conftest import DIGITS, Daemon, error_lines, read_rows, run_cli, sqlite_url, train, wait_for
from tests.faults.conftest import copy_checkpoint, renamed_task, write_state

pytestmark = pytest.mark.slow

EXIT_INCOMPLETE = 3
EXIT_TEMPORARY = 75


def copy_in_name_order(source: Path, target: Path, *, pause: float, chunk: int = 4096) -> list[str]:
    """Copy every file of `source` into `target` as `cp -r` and rsync do: in name order (so the
    `checkpoint` state file first), each written in chunks; returns the checkpoint names."""
    target.mkdir(exist_ok=True)
    for path in sorted(source.iterdir()):
        with open(path, "rb") as src, open(target / path.name, "wb") as dst:
            while block := src.read(chunk):
                dst.write(block)
                dst.flush()
                time.sleep(pause)
    return sorted((p.name[: -len(".index")] for p in source.glob("*.index")), key=lambda n: int(n.split("-")[-1]))


def strict_json(line: str) -> dict[str, Any]:
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(value: str) -> None:
        raise ValueError(f"not JSON: {value}")
    return json.loads(line, parse_constant=refuse)


def task_file(directory: Path, body: str, name: str = "task") -> str:
    """A digits task whose validation_data() is `body` (digits_data and tf are importable)."""
    path = directory / f"{name}_{time.monotonic_ns()}.py"
    path.write_text(
        f"import sys\nsys.path.insert(0, {str(DIGITS)!r})\nimport os\nimport numpy as np\nimport tensorflow as tf\n"
        "import digits_data, digits_model\n"
        "class Task:\n"
        "    def inference(self, features):\n"
        "        return digits_model.inference(features)\n"
        "    def validation_data(self):\n"
        + "".join(f"        {line}\n" for line in body.splitlines())
        + "TASK = Task()\n")
    return f"{path}:TASK"


def exit_code(daemon: Daemon, timeout: float = 120) -> int:
    assert daemon.process is not None
    code = daemon.process.wait(timeout=timeout)
    daemon._log_file.close()
    return code


# -- files that arrive after the state file ----------------------------------------------------

def test_a_finished_run_copied_in_name_order(tmp_path: Path, db: Path, daemons: list[Daemon],
                                             record_property: Callable[[str, object], None]) -> None:
    """Scenario 11: a finished run copied into the watched directory in name order (`checkpoint` first), a state file listing only the newest"""
    source = tmp_path / "finished"
    train(source, steps=100, save_every=20, max_to_keep=10, relative_paths=True)
    names = sorted((p.name[:-6] for p in source.glob("*.index")), key=lambda n: int(n.split("-")[-1]))
    write_state(source, names[-1:])  # like Saver(max_to_keep=0): only the newest is listed
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_ready()
    started = time.monotonic()
    copy_in_name_order(source, model_dir, pause=0.003)
    copy_seconds = time.monotonic() - started
    rows = daemon.wait_rows(len(names), timeout=120)
    time.sleep(1)
    assert daemon.stop() == 0
    rows = read_rows(db)
    assert Counter(r["checkpoint"] for r in rows) == Counter(names)
    assert {r["status"] for r in rows} == {"ok"}, [(r["checkpoint"], r["status"], r["error"]) for r in rows]
    record_property("detail", f"{len(names)} checkpoints copied in {copy_seconds:.1f} s, state file first and "
                              f"listing 1: {len(rows)} ok, 0 missing")


def test_data_still_growing_when_the_state_file_lists_it(tmp_path: Path, trained_dir: Path, db: Path,
                                                         daemons: list[Daemon],
                                                         record_property: Callable[[str, object], None]) -> None:
    """Scenario 12: the state file written before a checkpoint's .data has finished (a slow copy): retried, then ok"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_ready()
    for suffix in (".index", ".meta"):
        shutil.copy(trained_dir / f"model.ckpt-60{suffix}", model_dir / f"model.ckpt-60{suffix}")
    data = (trained_dir / "model.ckpt-60.data-00000-of-00001").read_bytes()
    target = model_dir / "model.ckpt-60.data-00000-of-00001"
    write_state(model_dir, ["model.ckpt-60"])
    with open(target, "wb") as out:  # 2 s to arrive, in ten pieces
        for start in range(0, len(data), -(-len(data) // 10)):
            out.write(data[start:start + -(-len(data) // 10)])
            out.flush()
            time.sleep(0.2)
    (row,) = daemon.wait_rows(1, timeout=60)
    assert daemon.stop() == 0
    assert row["status"] == "ok", row["error"]
    short = [e for e in daemon.events() if e["event"].startswith("checkpoint still being written")]
    assert short, "the first read should have come up short"
    record_property("detail", f"{len(short)} short reads retried while the data grew, then ok")


def test_a_checkpoint_rewritten_while_it_is_evaluated(tmp_path: Path, trained_dir: Path, db: Path,
                                                      daemons: list[Daemon],
                                                      record_property: Callable[[str, object], None]) -> None:
    """Scenario 12b: a checkpoint's files rewritten while it is evaluated: one row, for the bytes that stayed"""
    import hashlib

    from tests.conftest import slow_task

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db, task=slow_task(tmp_path, seconds_per_batch=0.3, batches=6)).start()
    daemons.append(daemon)
    daemon.wait_ready()
    copy_checkpoint(trained_dir, "model.ckpt-20", model_dir, "model.ckpt-100")
    write_state(model_dir, ["model.ckpt-100"])
    time.sleep(1.0)  # in the middle of its evaluation
    copy_checkpoint(trained_dir, "model.ckpt-60", model_dir, "model.ckpt-100")
    final = hashlib.sha256((model_dir / "model.ckpt-100.index").read_bytes()).hexdigest()[:16]
    wait_for(lambda: any(e["event"] == "evaluated" for e in daemon.events()), timeout=60, message="a row")
    time.sleep(3)  # a second row would have come by now
    assert daemon.stop() == 0
    rows = read_rows(db)
    assert [(r["checkpoint"], r["status"], r["fingerprint"]) for r in rows] == [("model.ckpt-100", "ok", final)]
    record_property("detail", "the evaluation that read changing files was dropped and run again: 1 row, "
                              "for the final bytes")


def test_thousands_of_listed_checkpoints_that_do_not_exist(tmp_path: Path, trained_dir: Path, db: Path,
                                                           daemons: list[Daemon],
                                                           record_property: Callable[[str, object], None]) -> None:
    """Scenario 13: a state file listing 3000 checkpoints that don't exist, and one newer that does"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    copy_checkpoint(trained_dir, "model.ckpt-60", model_dir, "model.ckpt-5000")
    names = [f"model.ckpt-{step}" for step in range(1, 3001)]
    daemon = Daemon(model_dir, db, "--missing-grace", "1").start()
    daemons.append(daemon)
    daemon.wait_ready()
    write_state(model_dir, [*names, "model.ckpt-5000"])
    rows = daemon.wait_rows(3001, timeout=60)
    assert daemon.stop() == 0
    status = Counter(r["status"] for r in rows)
    assert status == {"missing": 3000, "ok": 1}
    assert all("never appeared on disk within 1 s while newer checkpoints did" in r["error"]
               for r in rows if r["status"] == "missing")
    events = daemon.events()
    summaries = [e for e in events if e["event"] == "checkpoints missing"]
    assert [e["count"] for e in summaries] == [3000]  # one transaction, one line
    assert sum(e["event"] == "evaluated" for e in events) == 1
    assert sum(e["event"].startswith("checkpoint") for e in events) < 10
    record_property("detail", f"3000 missing in one line and one transaction, 1 ok; {len(events)} log lines in all")


# -- faults that are not the checkpoint's -------------------------------------------------------

def test_validation_data_unreadable_for_a_while(tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon],
                                                record_property: Callable[[str, object], None]) -> None:
    """Scenario 14a: validation data unreadable for a while: retried with backoff, never a failed row"""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    data_file = tmp_path / "validation.npz"
    features, labels = None, None
    import importlib.util
    spec = importlib.util.spec_from_file_location("digits_data", DIGITS / "digits_data.py")
    assert spec and spec.loader
    digits_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits_data)
    features, labels = digits_data.validation()
    np.savez(data_file, x=features, y=labels)
    task = task_file(tmp_path, f"""
def read():
    with np.load({str(data_file)!r}) as data:
        yield data["x"].astype(np.float32), data["y"].astype(np.int64)
return tf.data.Dataset.from_generator(read, output_signature=(
    tf.TensorSpec([None, 64], tf.float32), tf.TensorSpec([None], tf.int64)))""")
    hidden = data_file.with_suffix(".hidden")
    data_file.rename(hidden)  # unreadable from the start
    daemon = Daemon(model_dir, db, "--retries", "20", task=task).start()
    daemons.append(daemon)
    wait_for(lambda: sum(e["event"].startswith("evaluation failed, not for the checkpoint") for e in daemon.events())
             >= 3, timeout=90, message="three retries")
    assert read_rows(db) == []  # pending, not failed
    hidden.rename(data_file)  # readable again
    rows = daemon.wait_rows(3, timeout=90)
    assert daemon.stop() == 0
    assert {r["status"] for r in rows} == {"ok"}
    faults = [e for e in daemon.events() if e["event"].startswith("evaluation failed, not for the checkpoint")]
    delays = [e["retry_in"] for e in faults]
    assert delays[:3] == [1.0, 2.0, 4.0]  # backoff
    record_property("detail", f"{len(faults)} retries ({faults[0]['error'][:60]}…), then 3 ok rows, 0 failed")


@pytest.mark.parametrize("body, expected", [
    ("x, y = digits_data.validation()\nreturn x, y + 100", "Received a label value of 1"),
    ("x, y = digits_data.validation()\nreturn tf.data.Dataset.from_tensor_slices((x, y)).take(0).batch(8)",
     "the validation data produced no examples"),
], ids=["labels out of range", "a dataset that yields nothing"])
def test_a_broken_task_exits_restartably_and_records_nothing(tmp_path: Path, trained_dir: Path, db: Path,
                                                             daemons: list[Daemon], body: str, expected: str,
                                                             record_property: Callable[[str, object], None]) -> None:
    """Scenario 14b: a task that fails on every checkpoint (labels out of range, an empty dataset): retries, then exit 75, no rows"""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db, "--retries", "3", task=task_file(tmp_path, body)).start()
    daemons.append(daemon)
    assert exit_code(daemon) == EXIT_TEMPORARY
    assert read_rows(db) == []
    (last,) = [e for e in daemon.events() if e["event"] == "exiting to be restarted"]
    assert "3 times in a row" in last["error"] and expected in last["error"] and "Fix the task" in last["error"]
    (line,) = error_lines(daemon.log_text())
    assert line.startswith("evaluating failed 3 times in a row")
    record_property("detail", f"exit 75 after 3 tries, 0 rows: {line[:90]}…")


def test_retry_re_evaluates_failed_checkpoints_after_the_task_is_fixed(
        tmp_path: Path, trained_dir: Path, db: Path, record_property: Callable[[str, object], None]) -> None:
    """Scenario 14c: failed rows (a task that did not fit), the task fixed, `evaluator retry`: real rows"""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    url = sqlite_url(db)
    first = run_cli("watch", str(model_dir), "--task", renamed_task(tmp_path), "--once", "--db", url)
    assert first.returncode == EXIT_INCOMPLETE
    assert {r["status"] for r in read_rows(db)} == {"failed"}
    retried = run_cli("retry", "--model-dir", str(model_dir), "--db", url)
    assert retried.returncode == 0 and retried.stdout.count("was failed") == 3
    assert "3 checkpoint(s) will be evaluated again" in retried.stderr
    fixed = run_cli("watch", str(model_dir), "--task", "examples/digits/task.py:TASK", "--once", "--db", url)
    assert fixed.returncode == 0
    rows = read_rows(db)
    assert [(r["checkpoint"], r["status"]) for r in rows] == [
        ("model.ckpt-20", "ok"), ("model.ckpt-40", "ok"), ("model.ckpt-60", "ok")]
    nothing = run_cli("retry", "--model-dir", str(model_dir), "--db", url)
    assert nothing.returncode == 0 and "nothing to retry" in nothing.stderr
    record_property("detail", "3 failed -> `evaluator retry` -> 3 ok")


# -- the database going away --------------------------------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_the_database_file_deleted_or_replaced_while_watching(
        tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon], how: str,
        record_property: Callable[[str, object], None]) -> None:
    """Scenario 15: the SQLite file deleted or replaced while `watch` runs: no row logged that is not stored; exit 75; the restart re-records"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_ready()
    copy_checkpoint(trained_dir, "model.ckpt-20", model_dir, "model.ckpt-20")
    write_state(model_dir, ["model.ckpt-20"])
    daemon.wait_rows(1)
    time.sleep(0.5)
    if how == "deleted":
        db.unlink()
        for extra in ("-wal", "-shm"):
            Path(str(db) + extra).unlink(missing_ok=True)
    else:
        other = tmp_path / "other.db"
        sqlite3.connect(other).execute("CREATE TABLE unrelated (x)").connection.commit()
        os.replace(other, db)
    copy_checkpoint(trained_dir, "model.ckpt-40", model_dir, "model.ckpt-40")
    write_state(model_dir, ["model.ckpt-20", "model.ckpt-40"])
    assert exit_code(daemon) == EXIT_TEMPORARY
    evaluated = [e["checkpoint"] for e in daemon.events() if e["event"] == "evaluated"]
    assert evaluated == ["model.ckpt-20"]  # model.ckpt-40 was stored nowhere, so it is not logged
    (line,) = error_lines(daemon.log_text())
    assert f"was {'deleted' if how == 'deleted' else 'replaced by another file'} while watching" in line
    if how == "deleted":  # the restart evaluates what the (new) database lacks
        again = Daemon(model_dir, db, "--once", log_path=tmp_path / "again.log").start()
        daemons.append(again)
        assert exit_code(again) == 0
        assert [r["checkpoint"] for r in read_rows(db)] == ["model.ckpt-20", "model.ckpt-40"]
    record_property("detail", line[:100] + "…")


def test_database_urls_and_schemas_that_cannot_work(tmp_path: Path, trained_dir: Path, db: Path,
                                                    record_property: Callable[[str, object], None]) -> None:
    """Scenario 16: `--db sqlite://` for watch, a newer schema for `db current`, a locked fresh database at start"""
    memory = run_cli("watch", str(trained_dir), "--task", "examples/digits/task.py:TASK", "--db", "sqlite://")
    assert memory.returncode == 2 and "in-memory database: every row would be lost" in memory.stderr

    url = sqlite_url(db)
    assert run_cli("db", "upgrade", "--db", url).returncode == 0
    connection = sqlite3.connect(db)
    connection.execute("UPDATE alembic_version SET version_num = '9999'")
    connection.commit()
    newer = run_cli("db", "current", "--db", url)
    assert newer.returncode == 2 and "written by a newer evaluator" in newer.stderr
    assert "db upgrade" not in newer.stderr.split("upgrade the evaluator")[0]

    locked = tmp_path / "locked.db"
    holder = sqlite3.connect(locked, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    waited = run_cli("watch", str(trained_dir), "--task", "examples/digits/task.py:TASK", "--once",
                     "--db", sqlite_url(locked), "--db-wait", "3", "--log-format", "json")
    holder.execute("ROLLBACK")
    assert waited.returncode == EXIT_TEMPORARY, waited.stderr
    assert "database unavailable at start; retrying" in waited.stderr and "still unavailable after 3 s" in waited.stderr
    record_property("detail", f"in-memory refused (2), newer schema said (2), locked at start: retried "
                              f"{time.monotonic() - started:.0f} s then 75")


def test_a_write_lock_held_at_start_does_not_stop_a_current_schema(tmp_path: Path, trained_dir: Path, db: Path,
                                                                   daemons: list[Daemon]) -> None:
    """Scenario 16b: another process holds the write lock at start, the schema is current: it starts, and the row lands once the lock goes"""
    assert run_cli("db", "upgrade", "--db", sqlite_url(db)).returncode == 0
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_ready(timeout=60)
    time.sleep(2)
    holder.execute("ROLLBACK")
    rows = daemon.wait_rows(3, timeout=120)
    assert daemon.stop() == 0 and {r["status"] for r in rows} == {"ok"}


def test_report_while_the_schema_is_being_created(tmp_path: Path) -> None:
    """Scenario 16c: `report` on a database file whose schema does not exist yet says so (after a short wait)"""
    empty = tmp_path / "new.db"
    sqlite3.connect(empty).execute("PRAGMA user_version = 1").connection.commit()
    result = run_cli("report", "--db", sqlite_url(empty))
    assert result.returncode == 2 and "has no evaluator schema yet: `evaluator watch` creates it" in result.stderr


# -- exit codes and signals ---------------------------------------------------------------------

def test_once_exit_codes(tmp_path: Path, trained_dir: Path, db: Path) -> None:
    """Scenario 17: `--once` with an unreadable state file, or failed evaluations, exits 3"""
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "checkpoint").write_bytes(b"\xff\xfe not a proto")
    result = run_cli("watch", str(garbage), "--task", "examples/digits/task.py:TASK", "--once", "--db", sqlite_url(db))
    assert result.returncode == EXIT_INCOMPLETE
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    data = model_dir / "model.ckpt-40.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:10])
    os.utime(data, (time.time() - 60, time.time() - 60))  # an old truncation, not a copy in progress
    failed = run_cli("watch", str(model_dir), "--task", "examples/digits/task.py:TASK", "--once", "--db", sqlite_url(db))
    assert failed.returncode == EXIT_INCOMPLETE
    assert Counter(r["status"] for r in read_rows(db)) == {"ok": 2, "failed": 1}


def test_sighup_is_handled_like_sigterm(tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon]) -> None:
    """Scenario 18: SIGHUP stops it like SIGTERM: the same log lines, exit 0"""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_rows(3)
    assert daemon.stop(signal.SIGHUP) == 0
    stopping = [e for e in daemon.events() if e["event"] == "stopping"]
    assert [e["signal"] for e in stopping] == ["SIGHUP"]
    assert daemon.events()[-1]["event"] == "stopped"


# -- values that used to crash it ---------------------------------------------------------------

def nan_checkpoint(source: Path, prefix: str, target: Path, name: str) -> None:
    """A copy of checkpoint `prefix` whose float tensors are all NaN (a diverged training)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(source / prefix))
    graph = tf.Graph()
    with graph.as_default():
        variables = {}
        for key in reader.get_variable_to_shape_map():
            value = reader.get_tensor(key)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                value = np.full_like(value, np.nan)
            variables[key] = tf.compat.v1.Variable(value, name=key.replace("/", "_"))
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(target / name), write_meta_graph=False)


def test_values_that_used_to_crash_it(tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon],
                                      record_property: Callable[[str, object], None]) -> None:
    """Scenario 19: a 20-digit step in a name, NaN weights, a model directory that is not UTF-8, `--last 2**63`"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    huge = "model.ckpt-99999999999999999999"
    copy_checkpoint(trained_dir, "model.ckpt-60", model_dir, huge)
    nan_checkpoint(trained_dir, "model.ckpt-60", model_dir, "model.ckpt-70")
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_ready()
    write_state(model_dir, ["model.ckpt-70", huge])
    rows = {r["checkpoint"]: r for r in daemon.wait_rows(2)}
    assert daemon.stop() == 0
    assert rows[huge]["status"] == "ok" and rows[huge]["step"] == 60  # the step from global_step
    assert rows["model.ckpt-70"]["status"] == "failed" and rows["model.ckpt-70"]["loss"] is None
    assert "the loss is not finite (nan)" in rows["model.ckpt-70"]["error"]
    for line in daemon.log_text().splitlines():
        if line.startswith("{"):
            strict_json(line)  # no NaN anywhere

    odd = Path(os.fsdecode(bytes(tmp_path) + b"/model-\xff\xfe"))
    odd.mkdir()
    result = run_cli("watch", os.fsencode(odd).decode("utf-8", "surrogateescape"), "--task",
                     "examples/digits/task.py:TASK", "--once", "--db", sqlite_url(db))
    assert result.returncode == 2 and "is not valid UTF-8" in result.stderr and "Traceback" not in result.stderr

    big = run_cli("report", "--db", sqlite_url(db), "--last", str(2**63))
    assert big.returncode == 2 and "Traceback" not in big.stderr and "--last" in big.stderr
    record_property("detail", f"20-digit step: ok at step 60; NaN weights: failed ({rows['model.ckpt-70']['error'][:40]}…); "
                              "non-UTF-8 directory and --last 2**63: one line, exit 2")


# -- skips that used to be silent ---------------------------------------------------------------

def test_training_restarted_from_scratch_in_the_same_directory(tmp_path: Path, db: Path,
                                                               record_property: Callable[[str, object], None]) -> None:
    """Scenario 20: training restarted from scratch in the same directory writes the same names: new rows"""
    model_dir = tmp_path / "model"
    train(model_dir, relative_paths=True)
    url = sqlite_url(db)
    assert run_cli("watch", str(model_dir), "--task", "examples/digits/task.py:TASK", "--once", "--db", url).returncode == 0
    shutil.rmtree(model_dir)
    train(model_dir, relative_paths=True, seed=7)  # same names, other bytes
    assert run_cli("watch", str(model_dir), "--task", "examples/digits/task.py:TASK", "--once", "--db", url).returncode == 0
    rows = read_rows(db)
    assert Counter(r["checkpoint"] for r in rows) == {"model.ckpt-20": 2, "model.ckpt-40": 2, "model.ckpt-60": 2}
    assert len({r["fingerprint"] for r in rows}) == 6
    report = json.loads(run_cli("report", "--db", url, "--format", "json").stdout)
    assert len(report) == 6
    assert run_cli("watch", str(model_dir), "--task", "examples/digits/task.py:TASK", "--once", "--db", url).returncode == 0
    assert len(read_rows(db)) == 6  # and nothing twice
    record_property("detail", "3 names evaluated twice, once per training run (6 fingerprints), report shows 6")


def test_a_second_evaluation_under_another_name(tmp_path: Path, trained_dir: Path, db: Path,
                                                record_property: Callable[[str, object], None]) -> None:
    """Scenario 21: the same directory evaluated a second way (--no-ema) into the same database"""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    url = sqlite_url(db)
    base = ["watch", str(model_dir), "--task", "examples/digits/task.py:TASK", "--once", "--db", url,
            "--log-format", "json"]
    assert run_cli(*base).returncode == 0
    assert run_cli(*base, "--no-ema", "--name", "raw").returncode == 0
    rows = read_rows(db)
    assert Counter((r["name"], r["ema_source"]) for r in rows) == {("default", "tf1-names"): 3, ("raw", "none"): 3}
    same_name = run_cli(*base, "--no-ema")  # a careless reuse of the default name
    warning = [strict_json(line) for line in same_name.stderr.splitlines() if "other settings" in line]
    assert warning and warning[0]["differ"] == {"ema": {"recorded": True, "now": False},
                                                "ema_name": {"recorded": "ExponentialMovingAverage", "now": None}}
    table = run_cli("report", "--db", url).stdout
    assert f"{model_dir.resolve()} (raw)" in table
    record_property("detail", "6 rows (3 default with EMA, 3 raw); a reused name with --no-ema warned")


def test_two_watchers_on_one_directory_evaluate_each_checkpoint_once(
        tmp_path: Path, staged: Path, db: Path, daemons: list[Daemon],
        record_property: Callable[[str, object], None]) -> None:
    """Scenario 22: two `watch` processes on the same directory and database: each checkpoint evaluated once"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert run_cli("db", "upgrade", "--db", sqlite_url(db)).returncode == 0
    first = Daemon(model_dir, db, log_path=tmp_path / "first.log").start()
    second = Daemon(model_dir, db, log_path=tmp_path / "second.log").start()
    daemons.extend([first, second])
    first.wait_ready()
    second.wait_ready()
    names = [f"model.ckpt-{step}" for step in range(1, 61)]
    for name in names:
        for path in staged.glob(name + ".*"):
            os.link(path, model_dir / path.name)
    write_state(model_dir, names)
    first.wait_rows(60, timeout=120)
    time.sleep(1)
    assert first.stop() == 0 and second.stop() == 0
    rows = read_rows(db)
    assert Counter(r["checkpoint"] for r in rows) == Counter(names)
    evaluated = [e["checkpoint"] for d in (first, second) for e in d.events() if e["event"] == "evaluated"]
    assert Counter(evaluated) == Counter(names)  # nobody evaluated one twice
    doubled = [e for d in (first, second) for e in d.events() if e["event"].startswith("already recorded")]
    assert doubled == []
    shares = [sum(e["event"] == "evaluated" for e in d.events()) for d in (first, second)]
    claims = sqlite3.connect(db).execute("SELECT COUNT(*) FROM claims").fetchone()[0]
    assert claims == 0
    record_property("detail", f"60 checkpoints, evaluated {shares[0]} + {shares[1]} times, 0 twice, 0 claims left")


def test_a_dead_workers_claim_is_taken_over(tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon],
                                            record_property: Callable[[str, object], None]) -> None:
    """Scenario 23: kill -9 of a watcher mid-evaluation, another watching: the claim expires and the checkpoint is recorded once"""
    from tests.conftest import slow_task

    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    slow = slow_task(tmp_path, seconds_per_batch=0.5, batches=12)
    victim = Daemon(model_dir, db, "--lease", "3", task=slow, log_path=tmp_path / "victim.log").start()
    daemons.append(victim)
    victim.wait_event("checkpoint detected", timeout=90)
    time.sleep(2)  # claimed model.ckpt-20, in the middle of it
    other = Daemon(model_dir, db, "--lease", "3", "--rescan", "1", log_path=tmp_path / "other.log").start()
    daemons.append(other)
    other.wait_ready()
    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
    rows = other.wait_rows(3, timeout=120)
    assert other.stop() == 0
    assert Counter(r["checkpoint"] for r in rows) == {"model.ckpt-20": 1, "model.ckpt-40": 1, "model.ckpt-60": 1}
    record_property("detail", "the killed watcher's claim taken over (dead on this host; elsewhere: after the 3 s lease); 3 rows, 1 each")
