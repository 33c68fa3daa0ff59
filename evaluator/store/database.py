"""The evaluation history in SQL: engine set-up, schema migrations, claims, recording rows, queries.

SQLite (the default) runs in WAL mode with a busy timeout, and write transactions start with
`BEGIN IMMEDIATE`, so `report` can read while `watch` writes without "database is locked".
A checkpoint is claimed (a row in `claims` with an owner and an expiry) before it is evaluated, and
its result replaces the claim in one transaction: two evaluators never evaluate one checkpoint
twice while the claim's owner lives, and one whose owner died is taken over once it expires.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.resources
import json
import os
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (Engine, and_, create_engine, delete, event, exists, func, insert, or_, select, union_all,
                        update)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, aliased

from evaluator.errors import (
    DatabaseAway,
    DatabaseError,
    DatabaseGone,
    DatabaseUnavailable,
    SchemaMissing,
    StoreWriteError,
)
from evaluator.evaluation import EXAMPLES, MAX, MIN, CheckpointKey, Evaluation, History, Status, Worker
from evaluator.options import DB_ENV
from evaluator.schema import ClaimRow, EvaluationRow, MetricRow, SeriesRow, WorkerRow

#: The PostgreSQL advisory lock that serializes migrations (any number that is the evaluator's alone).
MIGRATION_LOCK = 0x65_76_61_6C  # "eval"
#: The class of the PostgreSQL advisory locks on one evaluation's `series` rows (`_lock_series`).
SERIES_LOCK = 0x73_65_72_69  # "seri"
#: How long a SQLite connection waits for another's lock before failing (seconds).
SQLITE_BUSY_TIMEOUT = 15.0

#: The Evaluation fields that are `evaluations` columns (metrics and goals live in `metrics`).
_FIELDS = [f.name for f in dataclasses.fields(Evaluation) if f.name not in ("metrics", "goals")]
#: Rows whose metrics are read in one query when a report streams.
_METRICS_CHUNK = 500
#: Words of a driver's error that say the database is busy or out of reach, not misconfigured.
_TRANSIENT = ("locked", "busy", "could not connect", "connection refused", "server closed", "timeout",
              "timed out", "terminating connection", "connection reset", "the database system is",
              "connection to server", "connection is bad", "connection is lost", "server conn crashed",
              "consuming input failed", "the connection is closed", "connection already closed")
#: Words of a server's FATAL answer to a login that will not change by waiting.
_REFUSED = ("does not exist", "authentication failed", "pg_hba.conf", "not permitted to log in",
            "no password supplied", "permission denied for database", "password is required")


class Claim(str, enum.Enum):
    """What asking to evaluate a checkpoint got."""

    #: Ours until recorded or released (or until it expires without a heartbeat).
    CLAIMED = "claimed"
    #: Another evaluator holds a live claim on it.
    HELD = "held"
    #: It already has a row.
    RECORDED = "recorded"


class SchemaState(str, enum.Enum):
    NONE = "none"
    BEHIND = "behind"
    CURRENT = "current"
    AHEAD = "ahead"


def default_url() -> str:
    """SQLite under $XDG_STATE_HOME (default ~/.local/state), per the XDG base directory spec."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return "sqlite:///" + os.path.join(state_home, "evaluator", "evaluations.db")


#: A --db without "://" ending like this is a SQLite file's path.
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def resolve_url(url: str | None) -> str:
    """--db, else $EVALUATOR_DB, else the default SQLite file. A plain path to a `.db` (`.sqlite`)
    file, or any path with a directory in it, means that SQLite file."""
    if url is not None and not url.strip():
        raise DatabaseError("--db is empty: give a database URL (sqlite:////path/e.db, postgresql+psycopg://...) "
                            "or a path to a .db file, or leave --db out for the default database")
    url = url or os.environ.get(DB_ENV) or default_url()
    if "://" not in url and (url.lower().endswith(SQLITE_SUFFIXES) or os.sep in url):
        return "sqlite:///" + os.path.abspath(os.path.expanduser(url))
    return url


def describe(url: str) -> str:
    """The URL as it may be shown in logs and errors (password hidden)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


class Store:
    """Records evaluations and answers the questions the loop and the report ask."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(sqlite_begin="IMMEDIATE")
        #: (device, inode) of the SQLite file once `watch` is set up: a change means it was replaced.
        self._identity: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        return describe(str(self.engine.url))

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file's absolute path; None for other databases (and in-memory SQLite)."""
        url = self.engine.url
        return os.path.abspath(os.path.expanduser(url.database or "")) if _is_sqlite_file(url) else None

    @staticmethod
    def check_url(url: str) -> URL:
        """Parse `url` and load its dialect and driver, without connecting; DatabaseError if that fails."""
        parsed = _parse(url)
        try:
            parsed.get_dialect().import_dbapi()
        except (NoSuchModuleError, ValueError) as err:  # ValueError: a malformed name such as "a.b.c"
            raise DatabaseError(f"--db {describe(url)}: unknown database kind {parsed.drivername!r}") from err
        except ImportError as err:
            raise DatabaseError(
                f"--db {describe(url)}: the driver for {parsed.drivername!r} is not installed ({err})"
            ) from err
        return parsed

    @staticmethod
    def check_durable(url: str) -> None:
        """DatabaseError for a database that forgets everything when the process ends."""
        parsed = Store.check_url(url)
        if parsed.get_backend_name() == "sqlite" and not _is_sqlite_file(parsed):
            raise DatabaseError(
                f"--db {describe(url)} is an in-memory database: every row would be lost when `watch` "
                "stops, and a restart would evaluate everything again. Give a file, e.g. "
                "sqlite:////var/lib/evaluator/evaluations.db (or omit --db for the default)"
            )

    @classmethod
    def prepare(cls, url: str, *, wait: float, on_retry: Any = None) -> Store:
        """Open `url` for `watch` and bring its schema to head, retrying while the database is
        locked or unreachable for up to `wait` seconds (then DatabaseUnavailable, a restartable
        error). The write lock is taken only when the schema needs a migration."""
        deadline = time.monotonic() + wait
        delay = 0.5
        while True:
            try:
                store = cls.open(url, create=True, busy_timeout=min(SQLITE_BUSY_TIMEOUT, max(wait / 4, 0.1)))
                try:
                    if store.schema_state() is not SchemaState.CURRENT:
                        store.upgrade()
                    store.remember_identity()
                except BaseException:
                    store.release()
                    raise
                return store
            except DatabaseError as err:
                cause = err.__cause__
                if not (isinstance(cause, DBAPIError) and _transient(cause)):
                    raise
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailable(
                        f"database {describe(url)} still unavailable after {wait:g} s ({_reason(cause)}); "
                        "exiting to be restarted (raise --db-wait to wait longer)"
                    ) from err
                if on_retry is not None:
                    on_retry(_reason(cause), delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    @classmethod
    def open(cls, url: str, *, create: bool, busy_timeout: float = SQLITE_BUSY_TIMEOUT) -> Store:
        """Connect to `url`; with create=False a missing SQLite file is an error, not a new file."""
        parsed = cls.check_url(url)
        if _is_sqlite_file(parsed):
            _prepare_sqlite_path(parsed, create=create)
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed)
        else:  # a server: a connection it dropped (restarted, failed over) is noticed before use
            engine = create_engine(parsed, pool_pre_ping=True, connect_args=_connect_args(parsed))
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", functools.partial(_sqlite_on_connect, busy_timeout=busy_timeout))
            event.listen(engine, "begin", _sqlite_on_begin)
        try:
            with engine.connect():
                pass
        except DBAPIError as err:
            engine.dispose()
            if _refused(err):
                raise DatabaseError(f"the database server refused the login for {describe(url)}: "
                                    f"{_fatal(err)}; check the user, password and database name in --db "
                                    "(waiting will not help)") from err
            raise DatabaseError(f"cannot open database {describe(url)}: {_reason(err)}") from err
        return cls(engine)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # -- schema -----------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (Alembic `upgrade head`)."""
        from alembic import command
        from alembic.util import CommandError

        if self.schema_state() is SchemaState.AHEAD:
            raise DatabaseError(self.newer_message())
        cfg = alembic_config()
        try:
            with self._writer.begin() as connection:
                if connection.dialect.name == "postgresql":
                    # Workers starting together on a new database: one migrates, the others wait
                    # here and find the schema current (SQLite: BEGIN IMMEDIATE serializes them).
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        except CommandError as err:
            raise DatabaseError(f"cannot upgrade {self.url}: {err}") from err
        except DBAPIError as err:
            raise DatabaseError(f"cannot upgrade {describe(str(self.engine.url))}: {_reason(err)}") from err

    def newer_message(self) -> str:
        return (f"{self.url} is at schema revision {self.revision()}, written by a newer evaluator "
                f"(this one knows up to {self.head_revision()}): upgrade the evaluator, not the database")

    @staticmethod
    def head_revision() -> str | None:
        """The newest schema revision this version of the evaluator ships."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    def revision(self) -> str | None:
        """The schema revision the database is at (None: no schema yet)."""
        from alembic.runtime.migration import MigrationContext

        try:
            with self.engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        except DBAPIError as err:
            raise DatabaseError(f"cannot read {self.url}: {_reason(err)}") from err

    def schema_state(self) -> SchemaState:
        """Whether the schema is missing, behind, at, or ahead of (a newer evaluator's) this version's head."""
        from alembic.script import ScriptDirectory

        revision = self.revision()
        if revision is None:
            return SchemaState.NONE
        scripts = ScriptDirectory.from_config(alembic_config())
        if revision == scripts.get_current_head():
            return SchemaState.CURRENT
        known = {script.revision for script in scripts.walk_revisions()}
        return SchemaState.BEHIND if revision in known else SchemaState.AHEAD

    # -- the file under us ------------------------------------------------------------------

    def remember_identity(self) -> None:
        """Note which SQLite file holds the schema, so a replaced or deleted file is noticed."""
        self._identity = _file_identity(self.sqlite_path) if self.sqlite_path else None

    def check_identity(self) -> None:
        """DatabaseGone if the SQLite file `watch` set up was deleted or replaced since."""
        if self._identity is None or self.sqlite_path is None:
            return
        now = _file_identity(self.sqlite_path)
        if now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise DatabaseGone(
                f"the database file {self.sqlite_path} was {what} while watching; rows written since are "
                "not in it. Exiting to be restarted: the restart evaluates every checkpoint without a row "
                "in the database then at that path"
            )

    # -- the loop ---------------------------------------------------------------------------

    def recorded(self, model_dir: str, name: str) -> dict[str, set[str]]:
        """The checkpoints of `model_dir` that have a row under evaluation `name`, with the fingerprints
        they were recorded with ("": any, a row older than fingerprints; none: only `missing`)."""
        done: dict[str, set[str]] = {}
        with self._reading() as session:
            stmt = select(EvaluationRow.checkpoint, EvaluationRow.fingerprint, EvaluationRow.status).where(
                EvaluationRow.model_dir == model_dir, EvaluationRow.name == name)
            for checkpoint, fingerprint, status in session.execute(stmt):
                fingerprints = done.setdefault(checkpoint, set())
                if fingerprint or status != Status.MISSING.value:  # see _matches
                    fingerprints.add(fingerprint)
        return done

    def settings(self, model_dir: str, name: str) -> dict[str, Any] | None:
        """The settings of the newest row of evaluation `name` of `model_dir` that has some."""
        with self._reading() as session:
            text = session.scalar(
                select(EvaluationRow.settings)
                .where(EvaluationRow.model_dir == model_dir, EvaluationRow.name == name,
                       EvaluationRow.settings.is_not(None))
                .order_by(EvaluationRow.id.desc()).limit(1))
        return json.loads(text) if text else None

    def claim(self, key: CheckpointKey, owner: str, lease: float) -> Claim:
        """Claim `key` for `owner` for `lease` seconds, taking over a claim that has expired."""
        return self.claim_many([key], owner, lease)[0]

    def claim_many(self, keys: list[CheckpointKey], owner: str, lease: float) -> list[Claim]:
        """Claim each of `keys` for `owner` in one transaction (a backlog's batch: one commit and a
        few statements, not one of each per checkpoint); what each claim got, in order.

        One upsert: insert the claims, or overwrite those that are `owner`'s own or have expired.
        """
        now = _now()
        expires_at = now + timedelta(seconds=lease)
        upsert = _upsert(self.engine.dialect.name)
        with self._writing() as session:
            if upsert is None:  # a backend without INSERT ... ON CONFLICT: one key at a time
                return [self._claim_one(session, key, owner, now, expires_at) for key in keys]
            recorded = _recorded_keys(session, keys)
            wanted = [key for key in keys if key not in recorded]
            won: set[CheckpointKey] = set()
            if wanted:
                # The excluded row is the one proposed: (owner, now, expiry). One statement, compiled
                # once and cached, sent with every key's parameters (SQLAlchemy's insertmanyvalues).
                stmt = upsert(ClaimRow)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["model_dir", "name", "checkpoint", "fingerprint"],
                    set_={"owner": stmt.excluded.owner, "claimed_at": stmt.excluded.claimed_at,
                          "expires_at": stmt.excluded.expires_at},
                    where=or_(ClaimRow.expires_at < stmt.excluded.claimed_at, ClaimRow.owner == stmt.excluded.owner),
                )
                # RETURNING names the rows written: the claims won (an ORM rowcount is not reliable everywhere).
                won = {CheckpointKey(*row) for row in session.execute(
                    stmt.returning(ClaimRow.model_dir, ClaimRow.name, ClaimRow.checkpoint, ClaimRow.fingerprint),
                    [_claim_values(key, owner, now, expires_at) for key in wanted])}
                # The upsert may have waited for another evaluator's transaction that recorded some of
                # these very checkpoints and dropped its claims (PostgreSQL, read committed): look again.
                late = _recorded_keys(session, [key for key in wanted if key in won])
                for key in late:
                    session.execute(delete(ClaimRow).where(*_matches(ClaimRow, key), ClaimRow.owner == owner))
                recorded |= late
            return [Claim.RECORDED if key in recorded else Claim.CLAIMED if key in won else Claim.HELD
                    for key in keys]

    @staticmethod
    def _claim_one(session: Session, key: CheckpointKey, owner: str, now: datetime, expires_at: datetime) -> Claim:
        """One claim without INSERT ... ON CONFLICT: delete an expired (or our own) claim, then insert."""
        if session.scalar(select(EvaluationRow.id).where(*_matches(EvaluationRow, key)).limit(1)):
            return Claim.RECORDED
        session.execute(delete(ClaimRow).where(*_matches(ClaimRow, key),
                                               or_(ClaimRow.expires_at < now, ClaimRow.owner == owner)))
        if session.scalar(select(ClaimRow.id).where(*_matches(ClaimRow, key))) is not None:
            return Claim.HELD
        session.execute(insert(ClaimRow).values(**_claim_values(key, owner, now, expires_at)))
        return Claim.CLAIMED

    def holder(self, key: CheckpointKey) -> str | None:
        """Who holds the claim on `key`, if anyone."""
        with self._reading() as session:
            return session.scalar(select(ClaimRow.owner).where(*_matches(ClaimRow, key)))

    def take_over(self, key: CheckpointKey, dead: str, owner: str, lease: float) -> bool:
        """Move `dead`'s claim on `key` to `owner` (the holder is known to be gone); False if it moved meanwhile."""
        now = _now()
        with self._writing() as session:
            result = session.execute(update(ClaimRow).where(*_matches(ClaimRow, key), ClaimRow.owner == dead)
                                     .values(owner=owner, claimed_at=now, expires_at=now + timedelta(seconds=lease)))
            return bool(result.rowcount)

    def renew(self, owner: str, lease: float) -> int:
        """Push back the expiry of every claim `owner` holds (the heartbeat); returns how many."""
        with self._writing() as session:
            result = session.execute(update(ClaimRow).where(ClaimRow.owner == owner)
                                     .values(expires_at=_now() + timedelta(seconds=lease)))
            return int(result.rowcount or 0)

    # -- workers ------------------------------------------------------------------------------

    def beat(self, worker: Worker) -> None:
        """Insert or refresh `worker`'s row (its heartbeat)."""
        values = {"owner": worker.owner, "host": worker.host, "pid": worker.pid, "lease": worker.lease,
                  "model_dirs": json.dumps(worker.model_dirs), "evaluating": worker.evaluating,
                  "evaluating_since": worker.evaluating_since, "started_at": worker.started_at,
                  "heartbeat_at": _now()}
        with self._writing() as session:
            found = session.scalar(select(WorkerRow.id).where(WorkerRow.owner == worker.owner))
            if found is None:
                session.execute(insert(WorkerRow).values(**values))
            else:
                session.execute(update(WorkerRow).where(WorkerRow.id == found).values(**values))

    def leave(self, owner: str) -> None:
        """`owner` stops: its row goes."""
        with self._writing() as session:
            session.execute(delete(WorkerRow).where(WorkerRow.owner == owner))

    def workers(self) -> list[Worker]:
        """Every worker that has a row, by host and pid (`heartbeat_at` says who is still alive)."""
        with self._reading() as session:
            rows = session.scalars(select(WorkerRow).order_by(WorkerRow.host, WorkerRow.pid))
            return [Worker(owner=r.owner, host=r.host, pid=r.pid, lease=r.lease, model_dirs=json.loads(r.model_dirs),
                           evaluating=r.evaluating, evaluating_since=r.evaluating_since, started_at=r.started_at,
                           heartbeat_at=r.heartbeat_at) for r in rows]

    def release_claims(self, owner: str, key: CheckpointKey | None = None) -> None:
        """Drop `owner`'s claims (or just the one on `key`): it stopped, or put the checkpoint back."""
        with self._writing() as session:
            session.execute(delete(ClaimRow).where(
                ClaimRow.owner == owner, *(_matches(ClaimRow, key) if key is not None else ())))

    def release(self) -> None:
        """Close pooled connections until the next query (the daemon calls it when it goes idle,
        commands when they are done).

        During a burst one connection serves every row (a commit is about a millisecond); between
        bursts no file is held open, so the database can be moved, backed up or remounted, a
        read-only file system shows at the next write, and SQLite truncates the WAL.
        """
        self.engine.dispose()

    def record(self, evaluation: Evaluation, owner: str | None = None) -> bool:
        """Write one row, and drop `owner`'s claim on it, in one transaction; False when the
        checkpoint already had a row.

        Raises StoreWriteError when the write fails for a reason that may pass (disk full,
        read-only file, lock held too long), DatabaseGone when the file or its schema went away.
        """
        return self.record_many([evaluation], owner) == 1

    def record_many(self, evaluations: Iterable[Evaluation], owner: str | None = None) -> int:
        """Write rows in one transaction, skipping those that exist; returns how many were new."""
        return len(self.record_new(evaluations, owner))

    def record_new(self, evaluations: Iterable[Evaluation], owner: str | None = None) -> list[Evaluation]:
        """Write rows in one transaction, skipping those that exist (another evaluator's); returns
        the ones written, which are all the log may call evaluated. A few statements for the whole
        batch (a backlog's catch-up writes dozens at once), not a few per row."""
        evaluations = list(evaluations)
        with self._writing() as session:
            if owner is not None:
                _drop_claims(session, owner, [evaluation.key for evaluation in evaluations])
            recorded = _recorded_keys(session, [evaluation.key for evaluation in evaluations])
            new: list[Evaluation] = []
            for evaluation in evaluations:
                if evaluation.key not in recorded:
                    recorded.add(evaluation.key)  # the same key twice in one batch: one row
                    new.append(evaluation)
            if new:
                ids = session.execute(insert(EvaluationRow).returning(EvaluationRow.id, sort_by_parameter_order=True),
                                      [_row_fields(evaluation) for evaluation in new]).scalars().all()
                metrics = [(row_id, evaluation) for row_id, evaluation in zip(ids, new) if evaluation.metrics]
                if metrics:
                    series = _series_ids(session, [evaluation for _, evaluation in metrics])
                    session.execute(insert(MetricRow), [
                        {**row, "series_id": series[evaluation.model_dir, evaluation.name, row["dataset"], row["name"]]}
                        for row_id, evaluation in metrics for row in _metric_rows(row_id, evaluation)])
        self.check_identity()  # a file replaced during the write: that row went nowhere
        return new

    def forget(self, model_dir: str, name: str, statuses: list[str], checkpoint: str | None = None) -> list[Evaluation]:
        """Delete the rows `evaluator retry` names, so they are evaluated again; returns them."""
        conditions = [EvaluationRow.model_dir == model_dir, EvaluationRow.name == name]
        if statuses:
            conditions.append(EvaluationRow.status.in_(statuses))
        if checkpoint is not None:
            conditions.append(EvaluationRow.checkpoint == checkpoint)
        with self._writing() as session:
            _lock_series(session, model_dir, name)
            found = list(session.scalars(select(EvaluationRow).where(*conditions)
                                         .order_by(EvaluationRow.step, EvaluationRow.id)))
            ids = [row.id for row in found]
            for start in range(0, len(ids), _METRICS_CHUNK):
                session.execute(delete(MetricRow).where(MetricRow.evaluation_id.in_(ids[start:start + _METRICS_CHUNK])))
            session.execute(delete(EvaluationRow).where(*conditions))
            # the metrics no row of the evaluation has any more
            session.execute(delete(SeriesRow).where(SeriesRow.model_dir == model_dir, SeriesRow.name == name,
                                                    ~exists().where(MetricRow.series_id == SeriesRow.id)))
        return [_evaluation(row) for row in found]

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """One write transaction (SQLite: BEGIN IMMEDIATE), its errors as the project's own; first,
        the check that the file `watch` set up is still the one at its path."""
        self.check_identity()
        try:
            with Session(self._writer) as session, session.begin():
                yield session
        except DBAPIError as err:
            self.engine.dispose()  # reconnect next time: the file may be replaced or writable again
            if _no_schema(err):
                raise DatabaseGone(
                    f"{self.url} lost its evaluator schema while watching (dropped tables, or a new "
                    "file); exiting to be restarted, which creates it again"
                ) from err
            raise StoreWriteError(f"cannot write to {self.url}: {_reason(err)}") from err

    # -- the report -------------------------------------------------------------------------

    def history(self, model_dir: str | None = None, last: int = 10, best_by: str | None = None,
                dataset: str | None = None, root: str | None = None) -> History:
        """The `last` highest-step rows of each evaluation (or of `model_dir`'s, or of those below
        `root`), and each one's best by `best_by` (default: accuracy, else loss) on `dataset`
        (default: the first set)."""
        with self.streaming_history(model_dir, last, best_by, dataset, root) as history:
            return dataclasses.replace(history, rows=list(history.rows))

    @contextmanager
    def streaming_history(self, model_dir: str | None = None, last: int = 10, best_by: str | None = None,
                          dataset: str | None = None, root: str | None = None) -> Iterator[History]:
        """Like `history`, with rows read from the database as they are consumed (JSON and CSV of
        any size in constant memory). Rows come per (model directory, name), oldest step first."""
        with self._reading() as session:
            groups = self._groups(session, model_dir, root)
            best = {group: found for group in groups
                    if (found := self._best(session, *group, best_by, dataset)) is not None}
            yield History(rows=self._rows(session, groups, last), best=best, best_by=best_by, dataset=dataset)

    def _rows(self, session: Session, groups: list[tuple[str, str]], last: int) -> Iterator[Evaluation]:
        try:
            for directory, name in groups:
                where = (EvaluationRow.model_dir == directory, EvaluationRow.name == name)
                # The highest steps, then rows without a step: each part read backwards along the
                # index (model_dir, name, step, id), which no one ORDER BY with NULLS LAST matches on
                # every backend.
                stepped = (select(EvaluationRow.id, EvaluationRow.step).where(*where, EvaluationRow.step.is_not(None))
                           .order_by(EvaluationRow.step.desc(), EvaluationRow.id.desc()).limit(last).subquery())
                unstepped = (select(EvaluationRow.id, EvaluationRow.step).where(*where, EvaluationRow.step.is_(None))
                             .order_by(EvaluationRow.id.desc()).limit(last).subquery())
                both = union_all(select(stepped), select(unstepped)).subquery()
                recent = (select(both.c.id).order_by(both.c.step.desc().nulls_last(), both.c.id.desc())
                          .limit(last).scalar_subquery())
                stmt = (select(EvaluationRow).where(EvaluationRow.id.in_(recent))
                        .order_by(EvaluationRow.step.asc().nulls_first(), EvaluationRow.id.asc())
                        .execution_options(yield_per=_METRICS_CHUNK))
                for chunk in session.scalars(stmt).partitions():
                    yield from self._with_metrics(session, chunk)
        except DBAPIError as err:
            raise DatabaseError(f"cannot read {self.url}: {_reason(err)}") from err

    def ok_rows(self, model_dir: str, name: str) -> Iterator[Evaluation]:
        """Every ok row of one evaluation with its metrics, by step (what actions catch up with)."""
        with self._reading() as session:
            stmt = (select(EvaluationRow).where(EvaluationRow.model_dir == model_dir, EvaluationRow.name == name,
                                                EvaluationRow.status == Status.OK.value)
                    .order_by(EvaluationRow.step.asc().nulls_first(), EvaluationRow.id.asc())
                    .execution_options(yield_per=_METRICS_CHUNK))
            for chunk in session.scalars(stmt).partitions():
                yield from self._with_metrics(session, chunk)

    @staticmethod
    def _with_metrics(session: Session, rows: Iterable[EvaluationRow]) -> Iterator[Evaluation]:
        rows = list(rows)
        found: dict[int, list[MetricRow]] = {}
        for metric in session.scalars(select(MetricRow).where(MetricRow.evaluation_id.in_([r.id for r in rows]))
                                      .order_by(MetricRow.id)):
            found.setdefault(metric.evaluation_id, []).append(metric)
        for row in rows:
            yield _evaluation(row, found.get(row.id, []))

    def _best(self, session: Session, model_dir: str, name: str, best_by: str | None,
              dataset: str | None) -> Evaluation | None:
        """The evaluation's best ok row by a metric, in the metric's direction (lowest step on ties)."""
        where = (EvaluationRow.model_dir == model_dir, EvaluationRow.name == name,
                 EvaluationRow.status == Status.OK.value)
        if dataset is None and best_by in (None, "accuracy", "loss"):  # the default set's columns, indexed
            # By accuracy; by loss when asked, or when no row has an accuracy (a regression).
            columns = {None: (EvaluationRow.accuracy, EvaluationRow.loss), "accuracy": (EvaluationRow.accuracy,),
                       "loss": (EvaluationRow.loss,)}[best_by]
            for column in columns:
                order = column.asc() if column is EvaluationRow.loss else column.desc()
                top = session.scalars(select(EvaluationRow).where(*where, column.is_not(None))
                                      .order_by(order, EvaluationRow.step.asc()).limit(1)).first()
                if top is not None:
                    break
        else:
            dataset = dataset or self._default_set(session, model_dir, name)
            # The metric's rows of this evaluation on that set are one series: index (series_id, value).
            series: dict[str, int | None] = {}

            def goal_of(metric: str) -> str | None:
                series[metric] = session.scalar(select(SeriesRow.id).where(
                    SeriesRow.model_dir == model_dir, SeriesRow.name == name, SeriesRow.dataset == dataset,
                    SeriesRow.metric == metric))
                if series[metric] is None:
                    return None
                # (ordered, so that PostgreSQL too reads it from the index, not by scanning `metrics`)
                return session.scalar(select(MetricRow.goal).join(EvaluationRow, MetricRow.evaluation_id == EvaluationRow.id)
                                      .where(*where, MetricRow.series_id == series[metric])
                                      .order_by(MetricRow.value).limit(1))

            goal = goal_of(best_by) if best_by else None
            if best_by is None:  # accuracy, else (a regression) loss, on that set
                best_by, goal = next(((m, g) for m in ("accuracy", "loss") if (g := goal_of(m)) is not None),
                                     ("accuracy", None))
            if goal is None:
                return None
            metric = (MetricRow.evaluation_id == EvaluationRow.id, MetricRow.series_id == series[best_by])
            order = MetricRow.value.asc() if goal == MIN else MetricRow.value.desc()
            top = session.scalars(select(EvaluationRow).join(MetricRow, and_(*metric)).where(*where)
                                  .order_by(order, EvaluationRow.step.asc()).limit(1)).first()
        return None if top is None else next(self._with_metrics(session, [top]))

    def known_metrics(self, model_dir: str | None = None, root: str | None = None) -> dict[str, set[str]]:
        """Validation set -> the metric names recorded for it (`report` checks what it is asked for)."""
        with self._reading() as session:  # `series`: a few rows, not every metric
            stmt = (select(SeriesRow.dataset, SeriesRow.metric).distinct()
                    .where(exists().where(MetricRow.series_id == SeriesRow.id)))
            if model_dir is not None:
                stmt = stmt.where(SeriesRow.model_dir == model_dir)
            if root is not None:
                stmt = stmt.where(_below(root, SeriesRow.model_dir))
            found: dict[str, set[str]] = {}
            for dataset, name in session.execute(stmt):
                found.setdefault(dataset, set()).add(name)
            return found

    @staticmethod
    def _default_set(session: Session, model_dir: str, name: str) -> str | None:
        """The first validation set of the evaluation's newest row with metrics (rows read newest
        first along the index (model_dir, name, id) until one has metrics)."""
        newest = (select(EvaluationRow.id)
                  .where(EvaluationRow.model_dir == model_dir, EvaluationRow.name == name,
                         exists().where(MetricRow.evaluation_id == EvaluationRow.id))
                  .order_by(EvaluationRow.id.desc()).limit(1).scalar_subquery())
        return session.scalar(select(MetricRow.dataset).where(MetricRow.evaluation_id == newest)
                              .order_by(MetricRow.id.asc()).limit(1))

    @staticmethod
    def _groups(session: Session, model_dir: str | None, root: str | None = None) -> list[tuple[str, str]]:
        """Each (model directory, name) that has rows, in order: a skip scan of the index on
        (model_dir, name, ...), a recursive query that jumps from one evaluation's first row to the
        next evaluation's (the next name in the directory, else the next directory's first), an index
        seek or two per evaluation instead of a read of every row."""
        row = aliased(EvaluationRow)
        # (>= '': every directory; it makes the first row an index seek, not the start of a scan)
        first = (select(row.model_dir, row.name).where(row.model_dir >= "", *(
                     (row.model_dir == model_dir,) if model_dir is not None else ()))
                 .order_by(row.model_dir, row.name).limit(1).subquery())
        walk = select(first.c.model_dir, first.c.name).cte("walk", recursive=True)
        next_name = (select(row.id).where(row.model_dir == walk.c.model_dir, row.name > walk.c.name)
                     .order_by(row.name).limit(1).scalar_subquery())
        next_dir = (select(row.id).where(row.model_dir > walk.c.model_dir)
                    .order_by(row.model_dir, row.name).limit(1).scalar_subquery())
        following = next_name if model_dir is not None else func.coalesce(next_name, next_dir)
        walk = walk.union_all(select(EvaluationRow.model_dir, EvaluationRow.name)
                              .join_from(walk, EvaluationRow, EvaluationRow.id == following))
        stmt = select(walk.c.model_dir, walk.c.name)
        if root is not None:
            stmt = stmt.where(_below(root, walk.c.model_dir))
        return [(d, n) for d, n in session.execute(stmt.order_by(walk.c.model_dir, walk.c.name))]

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        try:
            with Session(self.engine) as session:
                yield session
        except DBAPIError as err:
            if _no_schema(err):
                raise self._no_schema_error() from err
            if _transient(err):
                self.engine.dispose()
                raise DatabaseAway(f"cannot read {self.url} for now: {_reason(err)}") from err
            raise DatabaseError(f"cannot read {self.url}: {_reason(err)}") from err

    def _no_schema_error(self) -> DatabaseError:
        """Why a query found no table: no schema yet, a newer one, or an old one."""
        try:
            state = self.schema_state()
        except DatabaseError:
            state = SchemaState.NONE
        if state is SchemaState.NONE:
            return SchemaMissing(f"{self.url} has no evaluator schema yet: `evaluator watch` creates it when "
                                 "it starts (try again in a moment), or run `evaluator db upgrade`")
        if state is SchemaState.AHEAD:
            return DatabaseError(self.newer_message())
        return DatabaseError(f"{self.url} has an old evaluator schema: run `evaluator db upgrade`")

    def wait_for_schema(self, seconds: float) -> None:
        """Wait up to `seconds` while the schema is missing (`watch` may be creating it right now)."""
        deadline = time.monotonic() + seconds
        while self.schema_state() is SchemaState.NONE and time.monotonic() < deadline:
            time.sleep(0.2)


def alembic_config() -> Any:
    """An Alembic Config pointing at the migrations shipped in the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(importlib.resources.files("evaluator.migrations")))
    return cfg


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        raise DatabaseError(
            f"--db {url!r} is not a database URL (e.g. sqlite:////var/lib/evaluator/evaluations.db, or a path "
            "to a .db file, or postgresql+psycopg://user@host/db)"
        ) from None


def _is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


def _prepare_sqlite_path(url: URL, *, create: bool) -> None:
    path = os.path.abspath(os.path.expanduser(url.database or ""))
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise DatabaseError(f"--db {url}: {path} is not a file")
        return
    if not create:
        raise DatabaseError(f"no database at {path}: nothing recorded yet (`evaluator watch` creates it)")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as err:
        raise DatabaseError(f"cannot create the directory for {path}: {err.strerror}") from err


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any, *, busy_timeout: float) -> None:
    # Let SQLAlchemy's "begin" event (below) issue BEGIN, so writers can ask for IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # A deferred transaction that later writes can fail with "database is locked" even in WAL;
    # writers take the write lock up front instead (execution option sqlite_begin="IMMEDIATE").
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _row_fields(evaluation: Evaluation) -> dict[str, Any]:
    fields = {name: getattr(evaluation, name) for name in _FIELDS}
    fields["status"] = evaluation.status.value
    fields["settings"] = json.dumps(evaluation.settings, sort_keys=True) if evaluation.settings is not None else None
    return fields


def _evaluation(row: EvaluationRow, metrics: Iterable[MetricRow] = ()) -> Evaluation:
    fields: dict[str, Any] = {name: getattr(row, name) for name in _FIELDS}
    fields["status"] = Status(row.status)
    fields["settings"] = json.loads(row.settings) if row.settings else None
    values: dict[str, dict[str, float]] = {}
    goals: dict[str, str] = {}
    for metric in metrics:
        values.setdefault(metric.dataset, {})[metric.name] = int(metric.value) if metric.name == EXAMPLES else metric.value
        if metric.goal is not None:
            goals[metric.name] = metric.goal
    return Evaluation(**fields, metrics=values or None, goals=goals or None)


def _metric_rows(evaluation_id: int, evaluation: Evaluation) -> list[dict[str, Any]]:
    goals = evaluation.goals or {}
    return [{"evaluation_id": evaluation_id, "dataset": dataset, "name": name, "value": float(value),
             "goal": None if name == EXAMPLES else goals.get(name, MAX)}
            for dataset, values in (evaluation.metrics or {}).items() for name, value in values.items()]


def _series_ids(session: Session, evaluations: list[Evaluation]) -> dict[tuple[str, str, str, str], int]:
    """The `series` row of each (model directory, name, set, metric) of `evaluations`, added where new,
    under each evaluation's `_lock_series` lock (held until the transaction ends)."""
    keys = sorted({(evaluation.model_dir, evaluation.name, dataset, metric) for evaluation in evaluations
                   for dataset, values in (evaluation.metrics or {}).items() for metric in values})
    rows = [{"model_dir": model_dir, "name": name, "dataset": dataset, "metric": metric}
            for model_dir, name, dataset, metric in keys]
    for model_dir, name in sorted({(model_dir, name) for model_dir, name, _, _ in keys}):  # in one order: no deadlock
        _lock_series(session, model_dir, name)
    upsert = _upsert(session.get_bind().dialect.name)
    if upsert is None:  # a backend without INSERT ... ON CONFLICT: read, then add what is missing
        found: dict[tuple[str, str, str, str], int] = {}
        for row in rows:
            where = [getattr(SeriesRow, column) == value for column, value in row.items()]
            found[row["model_dir"], row["name"], row["dataset"], row["metric"]] = (
                session.scalar(select(SeriesRow.id).where(*where).with_for_update())
                or session.execute(insert(SeriesRow).values(**row).returning(SeriesRow.id)).scalar_one())
        return found
    stmt = upsert(SeriesRow).values(rows)
    stmt = stmt.on_conflict_do_update(index_elements=["model_dir", "name", "dataset", "metric"],
                                      set_={"metric": stmt.excluded.metric})
    return {(model_dir, name, dataset, metric): series_id for series_id, model_dir, name, dataset, metric
            in session.execute(stmt.returning(SeriesRow.id, SeriesRow.model_dir, SeriesRow.name, SeriesRow.dataset,
                                              SeriesRow.metric))}


def _drop_claims(session: Session, owner: str, keys: list[CheckpointKey]) -> None:
    """Delete `owner`'s claims on `keys`' checkpoints (their rows are being written)."""
    groups: dict[tuple[str, str], set[str]] = {}
    for key in keys:
        groups.setdefault((key.model_dir, key.name), set()).add(key.checkpoint)
    for (model_dir, name), names in groups.items():
        ordered = sorted(names)
        for start in range(0, len(ordered), _METRICS_CHUNK):
            session.execute(delete(ClaimRow).where(ClaimRow.owner == owner, ClaimRow.model_dir == model_dir,
                                                   ClaimRow.name == name,
                                                   ClaimRow.checkpoint.in_(ordered[start:start + _METRICS_CHUNK])))


def _lock_series(session: Session, model_dir: str, name: str) -> None:
    """Take the lock on one evaluation's `series` rows until the transaction ends (PostgreSQL; SQLite's
    writers take turns anyway). Writers add series and the metric rows that point at them under it,
    `forget` drops the series no metric row points at any more under it: neither sees the other's
    work half done, so no metric row is left without its series, nor a series without metrics."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"{model_dir}\0{name}".encode()) - 2**31  # a signed 32-bit key (collisions only wait)
        session.execute(select(func.pg_advisory_xact_lock(SERIES_LOCK, key)))


def _claim_values(key: CheckpointKey, owner: str, now: datetime, expires_at: datetime) -> dict[str, Any]:
    return {"model_dir": key.model_dir, "name": key.name, "checkpoint": key.checkpoint,
            "fingerprint": key.fingerprint, "owner": owner, "claimed_at": now, "expires_at": expires_at}


def _recorded_keys(session: Session, keys: Iterable[CheckpointKey]) -> set[CheckpointKey]:
    """Which of `keys` have a row, by the rule of `_matches`, with one query per (model directory,
    name) rather than one per key."""
    groups: dict[tuple[str, str], list[CheckpointKey]] = {}
    for key in keys:
        groups.setdefault((key.model_dir, key.name), []).append(key)
    found: set[CheckpointKey] = set()
    for (model_dir, name), group in groups.items():
        rows: dict[str, list[tuple[str, str]]] = {}
        for start in range(0, len(group), _METRICS_CHUNK):
            names = sorted({key.checkpoint for key in group[start:start + _METRICS_CHUNK]})
            for checkpoint, fingerprint, status in session.execute(
                    select(EvaluationRow.checkpoint, EvaluationRow.fingerprint, EvaluationRow.status)
                    .where(EvaluationRow.model_dir == model_dir, EvaluationRow.name == name,
                           EvaluationRow.checkpoint.in_(names))):
                rows.setdefault(checkpoint, []).append((fingerprint, status))
        for key in group:
            if any(_stands_for(key, fingerprint, status) for fingerprint, status in rows.get(key.checkpoint, ())):
                found.add(key)
    return found


def _stands_for(key: CheckpointKey, fingerprint: str, status: str) -> bool:
    """Whether a row of `key`'s checkpoint name, with `fingerprint` and `status`, is `key`'s row (the
    rule `_matches` writes as SQL)."""
    if key.fingerprint == "":  # a `missing` row: any row of that name already says more
        return True
    return fingerprint == key.fingerprint or (fingerprint == "" and status != Status.MISSING.value)


def _matches(table: Any, key: CheckpointKey) -> tuple[Any, ...]:
    """The WHERE clause for `key`. A row with an unknown fingerprint ("") written before fingerprints
    existed stands for whatever the name holds."""
    same = (table.model_dir == key.model_dir, table.name == key.name, table.checkpoint == key.checkpoint)
    if table is ClaimRow:
        return (*same, table.fingerprint == key.fingerprint)
    if key.fingerprint == "":  # a `missing` row: any row of that name already says more
        return same
    # A `missing` row does not stand for a checkpoint of the same name that appears later.
    legacy = and_(table.fingerprint == "", table.status != Status.MISSING.value)
    return (*same, or_(table.fingerprint == key.fingerprint, legacy))


def _below(root: str, column: Any = EvaluationRow.model_dir) -> Any:
    """The rows of `root` and of every model directory under it (not a sibling that merely starts alike)."""
    root = root.rstrip("/")
    return or_(column == root, column.startswith(root + "/", autoescape=True))


def _connect_args(url: URL) -> dict[str, Any]:
    """A server that does not answer fails a connection in seconds (then it is retried), not minutes."""
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        return {"connect_timeout": 10}
    return {}


def _upsert(dialect: str) -> Any:
    """The `insert` with ON CONFLICT of `dialect` (SQLite and PostgreSQL), else None."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    return None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _no_schema(err: DBAPIError) -> bool:
    text = str(err.orig).lower()
    return any(words in text for words in ("no such table", "no such column", "undefinedtable",
                                           "does not exist"))


def _transient(err: DBAPIError) -> bool:
    """Whether `err` says the database is busy or out of reach for now (worth waiting for); a server
    that answered and refused the login is not (waiting will not change the user or the password)."""
    if not isinstance(err, OperationalError) or _refused(err):
        return False
    text = str(err.orig).lower()
    return any(words in text for words in _TRANSIENT)


def _refused(err: DBAPIError) -> bool:
    """Whether the server answered and refused the connection: unknown role or database, a wrong
    or missing password, no pg_hba.conf entry, a role that may not log in."""
    text = str(err.orig).lower()
    return "fatal:" in text and any(words in text for words in _REFUSED)


def _fatal(err: DBAPIError) -> str:
    """The server's FATAL line without the connection preamble ("FATAL: role "x" does not exist")."""
    text = _reason(err)
    at = text.find("FATAL:")
    return " ".join(text[at:].split()) if at >= 0 else text


def _reason(err: DBAPIError) -> str:
    return str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
