"""Faults of the database: readers racing the writer, a full disk, a read-only file system."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from evaluator.service import RELEASE_AFTER
from evaluator.store import Store
from tests.conftest import Daemon, error_lines, read_rows, run_cli, sqlite_url, wait_for
from tests.faults.conftest import Tmpfs, copy_checkpoint, link_all, write_state

pytestmark = pytest.mark.slow


def test_report_in_a_loop_while_watch_writes(tmp_path: Path, staged: Path, db: Path, daemons: list[Daemon],
                                             record_property: Callable[[str, object], None]) -> None:
    """Scenario 6: `evaluator report` in a loop while `watch` writes many rows"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_ready()
    names = link_all(staged, model_dir)

    problems: list[str] = []
    reports = Counter[str]()
    done = threading.Event()

    def report_loop() -> None:  # the CLI, as a user runs it
        while not done.is_set() or reports["cli"] < 8:
            result = run_cli("report", "--db", sqlite_url(db), "--format", "json", "--last", "1000")
            reports["cli"] += 1
            if result.returncode != 0:
                problems.append(result.stderr.strip())
                continue
            for row in json.loads(result.stdout):
                if row["status"] != "ok" or None in (row["accuracy"], row["loss"], row["examples"]):
                    problems.append(f"partial row {row}")

    def read_loop() -> None:  # the report's own query, as fast as it goes
        reader = Store.open(sqlite_url(db), create=False)
        while not done.is_set():
            try:
                rows = reader.history(last=1000).rows
            except Exception as err:  # noqa: BLE001 - any failure is the finding
                problems.append(repr(err))
                continue
            reports["query"] += 1
            problems.extend(f"partial row {r}" for r in rows if r.accuracy is None or r.examples != 360)

    threads = [threading.Thread(target=report_loop), threading.Thread(target=report_loop),
               threading.Thread(target=read_loop)]
    for thread in threads:
        thread.start()
    try:
        for count in range(1, 201):
            write_state(model_dir, names[:count])
        daemon.wait_rows(200, timeout=180)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert daemon.stop() == 0
    assert problems == []
    assert not any("locked" in line for line in daemon.log_text().splitlines())
    record_property("detail", f"{reports['cli']} `report` runs and {reports['query']} queries during 200 writes: "
                              "no 'database is locked', no partial row")


@pytest.fixture
def disk(tmp_path: Path) -> Tmpfs:
    mounted = Tmpfs(tmp_path / "disk", size="2m")
    yield mounted
    mounted.unmount()


def start_on(disk: Tmpfs, tmp_path: Path, trained_dir: Path, daemons: list[Daemon]) -> tuple[Daemon, Path, Path]:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    db = disk.where / "evaluations.db"
    daemon = Daemon(model_dir, db, log_path=tmp_path / "watch.log").start()
    daemons.append(daemon)
    daemon.wait_ready()
    time.sleep(RELEASE_AFTER + 1)  # idle: the database is no longer held open (a remount would be "busy")
    return daemon, model_dir, db


def list_checkpoints(trained_dir: Path, model_dir: Path, count: int) -> list[str]:
    names = [f"model.ckpt-{step}" for step in range(100, 100 * (count + 1), 100)]
    for name in names:
        copy_checkpoint(trained_dir, "model.ckpt-60", model_dir, name)
    write_state(model_dir, names)
    return names


def retries(daemon: Daemon) -> list[dict[str, object]]:
    """The write retries logged: the claim before the evaluation, or the row after it."""
    return [e for e in daemon.events()
            if e["event"] in ("cannot claim the checkpoint; will retry", "cannot record the evaluation; will retry")]


def test_a_full_disk(tmp_path: Path, trained_dir: Path, disk: Tmpfs, daemons: list[Daemon],
                     record_property: Callable[[str, object], None]) -> None:
    """Scenario 7a: the database's disk is full: the daemon retries, and the rows land once there is space"""
    daemon, model_dir, db = start_on(disk, tmp_path, trained_dir, daemons)
    filler = disk.fill()
    names = list_checkpoints(trained_dir, model_dir, 3)
    wait_for(lambda: len(retries(daemon)) >= 2, timeout=60, message="retries while the disk is full")
    errors = {str(e["error"]).rsplit(": ", 1)[-1] for e in retries(daemon)}
    filler.unlink()  # space again
    rows = daemon.wait_rows(3, timeout=90)
    assert daemon.stop() == 0
    assert [r["checkpoint"] for r in rows] == names and {r["status"] for r in rows} == {"ok"}
    record_property("detail", f"{len(retries(daemon))} retries ({'; '.join(sorted(errors))}), then 3 rows, 1 each")


def test_a_read_only_file_system(tmp_path: Path, trained_dir: Path, disk: Tmpfs, daemons: list[Daemon],
                                 record_property: Callable[[str, object], None]) -> None:
    """Scenario 7b: the database's file system turns read-only: retries, then the rows land once it is writable"""
    daemon, model_dir, db = start_on(disk, tmp_path, trained_dir, daemons)
    disk.remount("ro")
    try:
        list_checkpoints(trained_dir, model_dir, 2)
        wait_for(lambda: len(retries(daemon)) >= 2, timeout=60, message="retries while read-only")
    finally:
        disk.remount("rw")
    rows = daemon.wait_rows(2, timeout=90)
    assert daemon.stop() == 0
    assert Counter(r["checkpoint"] for r in rows) == {"model.ckpt-100": 1, "model.ckpt-200": 1}
    error = str(retries(daemon)[0]["error"]).rsplit(": ", 1)[-1]
    record_property("detail", f"{len(retries(daemon))} retries ({error}), then 2 rows, 1 each")


def test_stopped_while_the_write_is_retried(tmp_path: Path, trained_dir: Path, disk: Tmpfs,
                                            daemons: list[Daemon],
                                            record_property: Callable[[str, object], None]) -> None:
    """Scenario 7c: SIGTERM while a write is being retried: exit 0, and the next start evaluates it again"""
    daemon, model_dir, db = start_on(disk, tmp_path, trained_dir, daemons)
    filler = disk.fill()
    list_checkpoints(trained_dir, model_dir, 1)
    wait_for(lambda: retries(daemon), timeout=60, message="a retry")
    assert daemon.stop(signal.SIGTERM) == 0
    assert any(e["event"].startswith(("stopping with an unrecorded result", "stopping while the database refuses"))
               for e in daemon.events())
    filler.unlink()
    again = Daemon(model_dir, db, "--once", log_path=tmp_path / "again.log").start()
    daemons.append(again)
    assert again.process is not None and again.process.wait(timeout=120) == 0
    rows = read_rows(db)
    assert [(r["checkpoint"], r["status"]) for r in rows] == [("model.ckpt-100", "ok")]
    record_property("detail", "stopped cleanly with the result unrecorded; the restart recorded it once")


def test_the_database_lost_at_start_is_a_configuration_error(tmp_path: Path, trained_dir: Path,
                                                             record_property: Callable[[str, object], None]) -> None:
    """Scenario 7d: a database that cannot be written at start: exit 2 with one line, no restart loop"""
    mounted = Tmpfs(tmp_path / "ro", size="1m")
    try:
        mounted.remount("ro")
        model_dir = tmp_path / "model"
        shutil.copytree(trained_dir, model_dir)
        result = run_cli("watch", str(model_dir), "--task", "examples/digits/task.py:TASK", "--once",
                         "--db", sqlite_url(mounted.where / "evaluations.db"))
    finally:
        mounted.unmount()
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    record_property("detail", line.rsplit(": ", 1)[-1])


@pytest.mark.parametrize("refusal", ["unknown role", "no such database", "may not log in"])
def test_a_refused_postgresql_login_is_a_configuration_error(tmp_path: Path, trained_dir: Path, pg_server: Any,
                                                             refusal: str) -> None:
    """The server answers and says no: that will never heal, so exit 2 at once with the server's
    reason, not 75 after --db-wait with "raise --db-wait"."""
    import psycopg

    url = pg_server.create_database()
    if refusal == "unknown role":
        url, expected = url.replace("://evaluator@", "://nosuchrole@"), 'role "nosuchrole" does not exist'
    elif refusal == "no such database":
        url, expected = url.rsplit("/", 1)[0] + "/nosuchdb", 'database "nosuchdb" does not exist'
    else:
        with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=evaluator dbname=postgres",
                             autocommit=True) as connection:
            connection.execute("DO $$ BEGIN CREATE ROLE nologin NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        url, expected = url.replace("://evaluator@", "://nologin@"), 'role "nologin" is not permitted to log in'
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    started = time.monotonic()
    result = run_cli("watch", str(model_dir), "--task", "examples/digits/task.py:TASK", "--once", "--db", url,
                     "--db-wait", "120")
    assert result.returncode == 2, result.stderr[-2000:]
    assert time.monotonic() - started < 60  # not after --db-wait
    (line,) = error_lines(result.stderr)
    assert expected in line and "refused the login" in line and "--db-wait" not in line, line
