"""store: one row per checkpoint, history and best, claims, errors users can act on; on SQLite (in WAL
mode) and on a real PostgreSQL server (tests/pg.py), every test that is not about SQLite's file."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from evaluator.errors import DatabaseError, DatabaseGone, DatabaseUnavailable, StoreWriteError
from evaluator.evaluation import CheckpointKey, Evaluation, Status
from evaluator.store import Claim, SchemaState, Store, default_url, resolve_url
from tests.conftest import read_rows, sqlite_url

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def evaluation(checkpoint: str, step: int | None, accuracy: float | None = 0.5,
               model_dir: str = "/jobs/a", status: Status = Status.OK, **extra: object) -> Evaluation:
    return Evaluation(model_dir=model_dir, checkpoint=checkpoint, step=step, status=status,
                      accuracy=accuracy, loss=0.1 if accuracy is not None else None,
                      examples=360 if accuracy is not None else None,
                      evaluated_at=T0 + timedelta(seconds=step or 0), **extra)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, db: Path) -> Store:
    """An upgraded store on each backend."""
    url = sqlite_url(db) if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = Store.open(url, create=True)
    opened.upgrade()
    return opened


@pytest.fixture
def sqlite_store(db: Path) -> Store:
    """For what is about SQLite's file itself (WAL, locks, the file replaced)."""
    opened = Store.open(sqlite_url(db), create=True)
    opened.upgrade()
    return opened


def rows_of(store: Store) -> list[dict[str, object]]:
    """The evaluations table, read with the backend's own driver (sqlite3, psycopg)."""
    url = store.engine.url
    return read_rows(Path(url.database) if url.get_backend_name() == "sqlite" else  # type: ignore[arg-type]
                     url.render_as_string(hide_password=False))


def claims_of(store: Store) -> list[tuple[str, str]]:
    url = store.engine.url
    if url.get_backend_name() == "sqlite":
        return sqlite3.connect(url.database).execute("SELECT owner, fingerprint FROM claims").fetchall()  # type: ignore[arg-type]
    import psycopg

    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as connection:
        return [tuple(row) for row in connection.execute("SELECT owner, fingerprint FROM claims")]  # type: ignore[misc]


def test_upgrade_creates_the_schema_and_is_idempotent(store: Store) -> None:
    assert store.revision() == Store.head_revision() == "0007"
    store.upgrade()
    assert store.revision() == "0007"


def test_sqlite_runs_in_wal_mode(sqlite_store: Store, db: Path) -> None:
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_row_round_trips(store: Store, db: Path) -> None:
    row = evaluation("model.ckpt-100", 100, 0.9125, ema_source="tf1-names", restore_seconds=0.01, eval_seconds=0.2,
                     device="cpu", detected_at=T0, started_at=T0)
    assert store.record(row) is True
    history = store.history("/jobs/a")
    assert history.rows == [row]
    raw = rows_of(store)[0]
    assert (raw["status"], raw["step"], raw["accuracy"], raw["ema_source"]) == ("ok", 100, 0.9125, "tf1-names")


def test_exactly_once_per_model_dir_and_checkpoint(store: Store, db: Path) -> None:
    assert store.record(evaluation("model.ckpt-100", 100, 0.9)) is True
    assert store.record(evaluation("model.ckpt-100", 100, 0.1)) is False
    assert store.record(evaluation("model.ckpt-100", 100, 0.9, model_dir="/jobs/b")) is True
    rows = rows_of(store)
    assert len(rows) == 2 and rows[0]["accuracy"] == 0.9  # the first row is kept, never overwritten
    assert store.recorded("/jobs/a", "default") == {"model.ckpt-100": {""}}


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
    assert history.best["/jobs/a", "default"].step == 200  # best over the whole history, shown or not
    assert history.best["/jobs/b", "default"].step == 10
    assert [r.step for r in store.history("/jobs/a", last=2).rows] == [400, 500]
    assert store.history("/jobs/none").rows == []


def test_best_ties_go_to_the_earliest_step(store: Store) -> None:
    for step in (300, 100, 200):
        store.record(evaluation(f"m-{step}", step, 0.8))
    history = store.history()
    assert history.best["/jobs/a", "default"].step == 100
    assert [history.is_best(r) for r in history.rows] == [True, False, False]


def test_reader_never_sees_locked_or_partial_rows(sqlite_store: Store, db: Path) -> None:
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
        sqlite_store.record(evaluation(f"m-{step}", step, 0.5))
    done.set()
    thread.join()
    assert errors == []
    assert len(read_rows(db)) == 300


def test_write_failure_is_a_store_write_error(sqlite_store: Store, db: Path) -> None:
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
    with pytest.raises(DatabaseError, match="no evaluator schema yet"):
        store.history()


def test_a_schema_newer_than_this_version(sqlite_store: Store, db: Path) -> None:
    connection = sqlite3.connect(db)
    connection.execute("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    connection.commit()
    with pytest.raises(DatabaseError, match="written by a newer evaluator .*upgrade the evaluator"):
        sqlite_store.upgrade()


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


# -- names, fingerprints, claims, the file under us ----------------------------------------------

def test_the_key_has_a_name_and_a_fingerprint(store: Store, db: Path) -> None:
    """Several evaluations of one checkpoint live side by side; a rewritten checkpoint gets a new row."""
    assert store.record(evaluation("model.ckpt-100", 100, 0.9, fingerprint="aaaa")) is True
    assert store.record(evaluation("model.ckpt-100", 100, 0.8, fingerprint="aaaa", name="raw")) is True
    assert store.record(evaluation("model.ckpt-100", 100, 0.7, fingerprint="bbbb")) is True  # from scratch
    assert store.record(evaluation("model.ckpt-100", 100, 0.1, fingerprint="bbbb")) is False
    assert store.recorded("/jobs/a", "default") == {"model.ckpt-100": {"aaaa", "bbbb"}}
    assert store.recorded("/jobs/a", "raw") == {"model.ckpt-100": {"aaaa"}}
    assert len(rows_of(store)) == 3


def test_a_missing_row_does_not_stand_for_a_later_checkpoint_of_that_name(store: Store) -> None:
    assert store.record(evaluation("model.ckpt-1", 1, None, status=Status.MISSING)) is True
    assert store.recorded("/jobs/a", "default") == {"model.ckpt-1": set()}
    # the same name appears later with real bytes: a row of its own...
    assert store.record(evaluation("model.ckpt-1", 1, 0.5, fingerprint="cccc")) is True
    # ...and a second `missing` for a name that has any row is not written
    assert store.record(evaluation("model.ckpt-1", 1, None, status=Status.MISSING)) is False


def test_a_legacy_row_without_fingerprint_stands_for_any(store: Store) -> None:
    assert store.record(evaluation("model.ckpt-1", 1, 0.5, fingerprint="")) is True
    assert store.record(evaluation("model.ckpt-1", 1, 0.5, fingerprint="dddd")) is False


def test_record_many_is_one_transaction_and_skips_existing(store: Store, db: Path) -> None:
    store.record(evaluation("m-5", 5, None, status=Status.MISSING))
    rows = [evaluation(f"m-{i}", i, None, status=Status.MISSING) for i in range(1000)]
    assert store.record_many(rows) == 999
    assert len(rows_of(store)) == 1000


def key(checkpoint: str = "model.ckpt-1", fingerprint: str = "ffff") -> CheckpointKey:
    return CheckpointKey("/jobs/a", "default", checkpoint, fingerprint)


def test_claims_exclude_others_until_recorded_or_expired(store: Store, db: Path) -> None:
    assert store.claim(key(), "w1", lease=60) is Claim.CLAIMED
    assert store.claim(key(), "w2", lease=60) is Claim.HELD
    assert store.claim(key(), "w1", lease=60) is Claim.CLAIMED  # its own claim, again
    assert store.claim(key(fingerprint="eeee"), "w2", lease=60) is Claim.CLAIMED  # another checkpoint
    assert store.record(evaluation("model.ckpt-1", 1, 0.5, fingerprint="ffff"), owner="w1") is True
    assert store.claim(key(), "w2", lease=60) is Claim.RECORDED
    assert claims_of(store) == [("w2", "eeee")]  # recording dropped w1's claim in the same transaction


def test_an_expired_claim_is_taken_over_and_renewal_keeps_one_alive(store: Store) -> None:
    assert store.claim(key("a"), "dead", lease=0.2) is Claim.CLAIMED
    assert store.claim(key("b"), "alive", lease=0.2) is Claim.CLAIMED
    time.sleep(0.3)
    assert store.renew("alive", lease=60) == 1
    assert store.claim(key("a"), "w2", lease=60) is Claim.CLAIMED  # taken over
    assert store.claim(key("b"), "w2", lease=60) is Claim.HELD
    store.release_claims("alive")
    assert store.claim(key("b"), "w2", lease=60) is Claim.CLAIMED


def test_forget_removes_the_rows_retry_names(store: Store) -> None:
    store.record(evaluation("m-1", 1, None, status=Status.FAILED, error="x"))
    store.record(evaluation("m-2", 2, 0.5))
    store.record(evaluation("m-3", 3, None, status=Status.FAILED, error="y", name="other"))
    assert [r.checkpoint for r in store.forget("/jobs/a", "default", ["failed"])] == ["m-1"]
    assert set(store.recorded("/jobs/a", "default")) == {"m-2"}
    assert store.forget("/jobs/a", "default", ["ok"], checkpoint="m-9") == []


def test_settings_of_the_newest_row(store: Store) -> None:
    assert store.settings("/jobs/a", "default") is None
    store.record(evaluation("m-1", 1, 0.5, settings={"task": "a:T", "ema": True}))
    store.record(evaluation("m-2", 2, 0.5, settings={"task": "b:T", "ema": False}))
    assert store.settings("/jobs/a", "default") == {"task": "b:T", "ema": False}


def test_a_replaced_or_deleted_file_is_noticed_before_a_write(sqlite_store: Store, db: Path) -> None:
    sqlite_store.remember_identity()
    sqlite_store.record(evaluation("m-1", 1, 0.5))
    sqlite_store.release()
    db.rename(db.with_suffix(".old"))
    with pytest.raises(DatabaseGone, match="was deleted while watching"):
        sqlite_store.record(evaluation("m-2", 2, 0.5))
    fresh = Store.open(sqlite_url(db), create=True)
    fresh.upgrade()
    fresh.release()
    with pytest.raises(DatabaseGone, match="was replaced by another file"):
        sqlite_store.record(evaluation("m-2", 2, 0.5))


def test_a_lost_schema_at_write_time_is_not_retried_in_silence(sqlite_store: Store, db: Path) -> None:
    sqlite_store.release()
    connection = sqlite3.connect(db)
    connection.execute("DROP TABLE evaluations")
    connection.commit()
    with pytest.raises(DatabaseGone, match="lost its evaluator schema"):
        sqlite_store.record(evaluation("m-1", 1, 0.5))


def test_prepare_waits_for_a_locked_database_then_gives_up_restartably(tmp_path: Path) -> None:
    """A fresh database whose write lock another process holds: retried, then a restartable error."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    retries: list[float] = []
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="still unavailable after 2 s .*locked") as caught:
        Store.prepare(sqlite_url(path), wait=2, on_retry=lambda reason, delay: retries.append(delay))
    assert caught.value.exit_code == 75 and retries and time.monotonic() - started < 15
    holder.execute("ROLLBACK")
    Store.prepare(sqlite_url(path), wait=2).release()


def test_prepare_takes_no_write_lock_when_the_schema_is_current(sqlite_store: Store, db: Path) -> None:
    sqlite_store.release()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        Store.prepare(sqlite_url(db), wait=1).release()  # reads only: the lock is no obstacle
    finally:
        holder.execute("ROLLBACK")


def test_an_in_memory_database_is_refused_for_watch() -> None:
    with pytest.raises(DatabaseError, match="in-memory database: every row would be lost"):
        Store.check_durable("sqlite://")
    Store.check_durable("sqlite:////tmp/x.db")


def test_schema_state(store: Store, db: Path, tmp_path: Path) -> None:
    assert store.schema_state() is SchemaState.CURRENT
    empty = Store.open(sqlite_url(tmp_path / "new.db"), create=True)
    assert empty.schema_state() is SchemaState.NONE


def test_workers_beat_show_and_leave(store: Store) -> None:
    from evaluator.evaluation import Worker

    now = datetime.now(timezone.utc)
    worker = Worker(owner="h1:10:abc", host="h1", pid=10, lease=30, model_dirs=["/jobs/a"], started_at=now)
    store.beat(worker)
    store.beat(Worker(owner="h2:20:def", host="h2", pid=20, lease=30, model_dirs=["/jobs/b"], started_at=now,
                      evaluating="/jobs/b/model.ckpt-5", evaluating_since=now))
    store.beat(worker)  # a heartbeat refreshes the row, never adds one
    found = store.workers()
    assert [(w.host, w.pid, w.evaluating, w.model_dirs) for w in found] == [
        ("h1", 10, None, ["/jobs/a"]), ("h2", 20, "/jobs/b/model.ckpt-5", ["/jobs/b"])]
    assert all(w.alive(datetime.now(timezone.utc)) for w in found)
    assert not found[0].alive(datetime.now(timezone.utc) + timedelta(seconds=31))  # no heartbeat for a lease: gone
    store.leave("h1:10:abc")
    assert [w.host for w in store.workers()] == ["h2"]


def test_history_below_a_root(store: Store) -> None:
    """`report --root`: the runs of a sweep, not a sibling whose name merely starts the same."""
    for model_dir in ("/sweep/a", "/sweep/b/model", "/sweep-old/a", "/sweep_x/a"):
        store.record(evaluation("m-1", 1, 0.5, model_dir=model_dir))
    assert sorted({r.model_dir for r in store.history(root="/sweep").rows}) == ["/sweep/a", "/sweep/b/model"]
    assert {r.model_dir for r in store.history(root="/sweep_").rows} == set()


def test_a_batch_of_claims_is_one_transaction_with_each_keys_own_answer(store: Store) -> None:
    """claim_many answers per key as claim does: recorded, held by a live owner, ours (new, our own
    again, or an expired one taken over)."""
    keys = [CheckpointKey("/m", "default", f"model.ckpt-{i}", f"f{i}") for i in range(6)]
    now = datetime.now(timezone.utc)
    store.record(Evaluation("/m", "model.ckpt-0", 0, Status.OK, now, fingerprint="f0", accuracy=0.5, loss=1.0))
    assert store.claim(keys[1], "other", lease=60) is Claim.CLAIMED  # alive
    assert store.claim(keys[2], "other", lease=0.01) is Claim.CLAIMED  # about to expire
    assert store.claim(keys[3], "me", lease=60) is Claim.CLAIMED  # ours already
    time.sleep(0.05)
    got = store.claim_many(keys, "me", lease=60)
    assert got == [Claim.RECORDED, Claim.HELD, Claim.CLAIMED, Claim.CLAIMED, Claim.CLAIMED, Claim.CLAIMED]
    assert [store.holder(k) for k in keys[1:]] == ["other", "me", "me", "me", "me"]
    # A `missing` row (no fingerprint) stands for any claim of that name; a legacy row too.
    assert store.claim_many([CheckpointKey("/m", "default", "model.ckpt-0", "other-bytes")], "me", 60) == [Claim.CLAIMED]


def test_a_batch_of_rows_drops_its_claims_and_skips_what_exists(store: Store, db: Path) -> None:
    now = datetime.now(timezone.utc)
    rows = [Evaluation("/m", f"model.ckpt-{i}", i, Status.OK, now, fingerprint=f"f{i}", accuracy=i / 10, loss=1.0,
                       examples=10, metrics={"validation": {"accuracy": i / 10, "loss": 1.0, "examples": 10}},
                       goals={"accuracy": "max", "loss": "min"}) for i in range(5)]
    assert store.claim_many([r.key for r in rows], "me", lease=60) == [Claim.CLAIMED] * 5
    store.record(rows[2])  # another evaluator's row came first
    written = store.record_new(rows, owner="me")
    assert [r.checkpoint for r in written] == ["model.ckpt-0", "model.ckpt-1", "model.ckpt-3", "model.ckpt-4"]
    assert all(store.holder(r.key) is None for r in rows)
    history = store.history("/m", last=10)
    assert [(r.checkpoint, r.value("accuracy")) for r in history.rows] == [(f"model.ckpt-{i}", i / 10) for i in range(5)]
    assert history.best[("/m", "default")].checkpoint == "model.ckpt-4"
