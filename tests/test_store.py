"""store: one row per checkpoint, history and best, SQLite in WAL mode, errors users can act on."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from evaluator.errors import DatabaseError, StoreWriteError
from evaluator.evaluation import Evaluation, Status
from evaluator.store import Store, default_url, resolve_url
from tests.conftest import read_rows, sqlite_url

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def evaluation(checkpoint: str, step: int | None, accuracy: float | None = 0.5,
               model_dir: str = "/jobs/a", status: Status = Status.OK, **extra: object) -> Evaluation:
    return Evaluation(model_dir=model_dir, checkpoint=checkpoint, step=step, status=status,
                      accuracy=accuracy, loss=0.1 if accuracy is not None else None,
                      examples=360 if accuracy is not None else None,
                      evaluated_at=T0 + timedelta(seconds=step or 0), **extra)  # type: ignore[arg-type]


@pytest.fixture
def store(db: Path) -> Store:
    opened = Store.open(sqlite_url(db), create=True)
    opened.upgrade()
    return opened


def test_upgrade_creates_the_schema_and_is_idempotent(store: Store) -> None:
    assert store.revision() == Store.head_revision() == "0002"
    store.upgrade()
    assert store.revision() == "0002"


def test_sqlite_runs_in_wal_mode(store: Store, db: Path) -> None:
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_row_round_trips(store: Store, db: Path) -> None:
    row = evaluation("model.ckpt-100", 100, 0.9125, ema=True, restore_seconds=0.01, eval_seconds=0.2,
                     device="cpu", detected_at=T0, started_at=T0)
    assert store.record(row) is True
    history = store.history("/jobs/a")
    assert history.rows == [row]
    raw = read_rows(db)[0]
    assert (raw["status"], raw["step"], raw["accuracy"], raw["ema"]) == ("ok", 100, 0.9125, 1)


def test_exactly_once_per_model_dir_and_checkpoint(store: Store, db: Path) -> None:
    assert store.record(evaluation("model.ckpt-100", 100, 0.9)) is True
    assert store.record(evaluation("model.ckpt-100", 100, 0.1)) is False
    assert store.record(evaluation("model.ckpt-100", 100, 0.9, model_dir="/jobs/b")) is True
    rows = read_rows(db)
    assert len(rows) == 2 and rows[0]["accuracy"] == 0.9  # the first row is kept, never overwritten
    assert store.recorded("/jobs/a") == {"model.ckpt-100"}


def test_missing_and_failed_rows(store: Store) -> None:
    store.record(evaluation("model.ckpt-1", 1, None, status=Status.MISSING, error="deleted"))
    store.record(evaluation("model.ckpt-2", 2, None, status=Status.FAILED, error="bad shape"))
    statuses = [(r.status, r.error) for r in store.history().rows]
    assert statuses == [(Status.MISSING, "deleted"), (Status.FAILED, "bad shape")]


def test_history_takes_the_highest_steps_per_model_dir(store: Store) -> None:
    for step, accuracy in [(100, 0.5), (300, 0.7), (200, 0.9), (400, 0.6), (500, None)]:
        status = Status.OK if accuracy is not None else Status.FAILED
        store.record(evaluation(f"m-{step}", step, accuracy, status=status))
    store.record(evaluation("m-10", 10, 0.99, model_dir="/jobs/b"))
    history = store.history(last=3)
    assert [(r.model_dir, r.step) for r in history.rows] == [
        ("/jobs/a", 300), ("/jobs/a", 400), ("/jobs/a", 500), ("/jobs/b", 10)]
    assert history.best["/jobs/a"].step == 200  # best over the whole history, shown or not
    assert history.best["/jobs/b"].step == 10
    assert [r.step for r in store.history("/jobs/a", last=2).rows] == [400, 500]
    assert store.history("/jobs/none").rows == []


def test_best_ties_go_to_the_earliest_step(store: Store) -> None:
    for step in (300, 100, 200):
        store.record(evaluation(f"m-{step}", step, 0.8))
    history = store.history()
    assert history.best["/jobs/a"].step == 100
    assert [history.is_best(r) for r in history.rows] == [True, False, False]


def test_reader_never_sees_locked_or_partial_rows(store: Store, db: Path) -> None:
    """A reader in another connection, in a loop, while rows are written one transaction each."""
    errors: list[BaseException] = []
    done = threading.Event()

    def read_loop() -> None:
        reader = Store.open(sqlite_url(db), create=False)
        while not done.is_set():
            try:
                for row in reader.history(last=1000).rows:
                    assert row.accuracy is not None and row.examples == 360 and row.loss == 0.1
            except BaseException as err:  # noqa: BLE001 - any failure fails the test
                errors.append(err)
                return

    thread = threading.Thread(target=read_loop)
    thread.start()
    for step in range(300):
        store.record(evaluation(f"m-{step}", step, 0.5))
    done.set()
    thread.join()
    assert errors == []
    assert len(read_rows(db)) == 300


def test_write_failure_is_a_store_write_error(store: Store, db: Path) -> None:
    locker = sqlite3.connect(db, timeout=0)
    locker.execute("BEGIN IMMEDIATE")  # another writer holds the lock longer than our busy timeout
    impatient = Store.open(sqlite_url(db), create=False, busy_timeout=0.05)
    try:
        with pytest.raises(StoreWriteError, match="database is locked"):
            impatient.record(evaluation("m-1", 1))
    finally:
        locker.rollback()
    assert impatient.record(evaluation("m-1", 1)) is True  # once the lock is gone, the same row lands


@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "is not a database URL"),
    ("nosuchdb://host/x", "unknown database kind 'nosuchdb'"),
    ("postgresql+nosuchdriver://localhost/x", "unknown database kind"),
])
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(DatabaseError, match=message):
        Store.open(url, create=True)


def test_report_does_not_create_a_database(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no database at .*nothing recorded yet"):
        Store.open(sqlite_url(tmp_path / "absent.db"), create=False)
    assert not (tmp_path / "absent.db").exists()


def test_an_unopenable_file(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(DatabaseError, match="is not a file"):
        Store.open(sqlite_url(tmp_path / "dir.db"), create=True)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(DatabaseError, match="cannot create the directory"):
        Store.open(sqlite_url(tmp_path / "plain" / "sub" / "e.db"), create=True)


def test_a_database_without_schema(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "empty.db").execute("CREATE TABLE other (x)").connection.commit()
    store = Store.open(sqlite_url(tmp_path / "empty.db"), create=False)
    with pytest.raises(DatabaseError, match="no evaluator schema, or an old one: run `evaluator db upgrade`"):
        store.history()


def test_a_schema_newer_than_this_version(store: Store, db: Path) -> None:
    connection = sqlite3.connect(db)
    connection.execute("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    connection.commit()
    with pytest.raises(DatabaseError, match="was it written by a newer evaluator"):
        store.upgrade()


def test_default_url_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.delenv("EVALUATOR_DB", raising=False)
    assert default_url() == f"sqlite:///{tmp_path}/evaluator/evaluations.db"
    assert resolve_url(None) == default_url()
    monkeypatch.setenv("EVALUATOR_DB", "sqlite:////from/env.db")
    assert resolve_url(None) == "sqlite:////from/env.db"
    assert resolve_url("sqlite:////flag.db") == "sqlite:////flag.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_url() == f"sqlite:///{tmp_path}/.local/state/evaluator/evaluations.db"
