"""The evaluation history in SQL: engine set-up, schema migrations, recording rows, querying them.

SQLite (the default) runs in WAL mode with a busy timeout, and write transactions start with
`BEGIN IMMEDIATE`, so `report` can read while `watch` writes without "database is locked".
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.orm import Session

from evaluator.errors import DatabaseError, StoreWriteError
from evaluator.evaluation import Evaluation, History, Status
from evaluator.options import DB_ENV
from evaluator.schema import EvaluationRow

#: How long a SQLite connection waits for another's lock before failing (seconds).
SQLITE_BUSY_TIMEOUT = 15.0

_FIELDS = [f.name for f in dataclasses.fields(Evaluation)]


def default_url() -> str:
    """SQLite under $XDG_STATE_HOME (default ~/.local/state), per the XDG base directory spec."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return "sqlite:///" + os.path.join(state_home, "evaluator", "evaluations.db")


def resolve_url(url: str | None) -> str:
    """--db, else $EVALUATOR_DB, else the default SQLite file."""
    return url or os.environ.get(DB_ENV) or default_url()


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

    @classmethod
    def open(cls, url: str, *, create: bool, busy_timeout: float = SQLITE_BUSY_TIMEOUT) -> Store:
        """Connect to `url`; with create=False a missing SQLite file is an error, not a new file."""
        parsed = cls.check_url(url)
        if _is_sqlite_file(parsed):
            _prepare_sqlite_path(parsed, create=create)
        engine = create_engine(parsed)
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", functools.partial(_sqlite_on_connect, busy_timeout=busy_timeout))
            event.listen(engine, "begin", _sqlite_on_begin)
        try:
            with engine.connect():
                pass
        except DBAPIError as err:
            engine.dispose()
            raise DatabaseError(f"cannot open database {describe(url)}: {_reason(err)}") from err
        return cls(engine)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Close pooled connections until the next query (the daemon calls it when it goes idle,
        commands when they are done).

        During a burst one connection serves every row (a commit is about a millisecond); between
        bursts no file is held open, so the database can be moved, backed up or remounted, a
        read-only file system shows at the next write, and SQLite truncates the WAL.
        """
        self.engine.dispose()

    # -- schema -----------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (Alembic `upgrade head`)."""
        from alembic import command
        from alembic.util import CommandError

        cfg = alembic_config()
        try:
            with self._writer.begin() as connection:
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        except CommandError as err:
            raise DatabaseError(
                f"cannot upgrade {describe(str(self.engine.url))}: {err} "
                "(was it written by a newer evaluator?)"
            ) from err
        except DBAPIError as err:
            raise DatabaseError(f"cannot upgrade {describe(str(self.engine.url))}: {_reason(err)}") from err

    @staticmethod
    def head_revision() -> str | None:
        """The newest schema revision this version of the evaluator ships."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(alembic_config()).get_current_head()

    def revision(self) -> str | None:
        """The schema revision the database is at (None: no schema yet)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    # -- the loop ---------------------------------------------------------------------------

    def recorded(self, model_dir: str) -> set[str]:
        """The checkpoints of `model_dir` that already have a row."""
        with self._reading() as session:
            stmt = select(EvaluationRow.checkpoint).where(EvaluationRow.model_dir == model_dir)
            return set(session.scalars(stmt))

    def record(self, evaluation: Evaluation) -> bool:
        """Write one row in one transaction; False when the checkpoint already had one.

        Raises StoreWriteError when the write fails for a reason that may pass (disk full,
        read-only file, lock held too long).
        """
        row = EvaluationRow(**_row_fields(evaluation))
        try:
            with Session(self._writer) as session, session.begin():
                session.add(row)
        except IntegrityError:
            if self._has(evaluation.model_dir, evaluation.checkpoint):
                return False
            raise
        except DBAPIError as err:
            self.engine.dispose()  # reconnect next time: the file may be replaced or writable again
            raise StoreWriteError(f"cannot write to {describe(str(self.engine.url))}: {_reason(err)}") from err
        return True

    def _has(self, model_dir: str, checkpoint: str) -> bool:
        with self._reading() as session:
            stmt = select(EvaluationRow.id).where(
                EvaluationRow.model_dir == model_dir, EvaluationRow.checkpoint == checkpoint
            )
            return session.scalar(stmt) is not None

    # -- the report -------------------------------------------------------------------------

    def history(self, model_dir: str | None = None, last: int = 10) -> History:
        """The `last` highest-step rows of each model directory (or of `model_dir`), and each one's best."""
        rows: list[Evaluation] = []
        best: dict[str, Evaluation] = {}
        with self._reading() as session:
            for directory in [model_dir] if model_dir else self._model_dirs(session):
                recent = session.scalars(
                    select(EvaluationRow)
                    .where(EvaluationRow.model_dir == directory)
                    .order_by(EvaluationRow.step.desc().nulls_last(), EvaluationRow.evaluated_at.desc())
                    .limit(last)
                ).all()
                rows.extend(_evaluation(row) for row in reversed(recent))
                top = session.scalars(
                    select(EvaluationRow)
                    .where(
                        EvaluationRow.model_dir == directory,
                        EvaluationRow.status == Status.OK.value,
                        EvaluationRow.accuracy.is_not(None),
                    )
                    .order_by(EvaluationRow.accuracy.desc(), EvaluationRow.step.asc())
                    .limit(1)
                ).first()
                if top is not None:
                    best[directory] = _evaluation(top)
        return History(rows=rows, best=best)

    @staticmethod
    def _model_dirs(session: Session) -> list[str]:
        stmt = select(EvaluationRow.model_dir).distinct().order_by(EvaluationRow.model_dir)
        return list(session.scalars(stmt))

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        try:
            with Session(self.engine) as session:
                yield session
        except DBAPIError as err:
            if "no such table" in str(err.orig) or "no such column" in str(err.orig):
                raise DatabaseError(
                    f"{describe(str(self.engine.url))} has no evaluator schema, or an old one: "
                    "run `evaluator db upgrade`"
                ) from err
            raise DatabaseError(f"cannot read {describe(str(self.engine.url))}: {_reason(err)}") from err


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
            f"--db {url!r} is not a database URL (e.g. sqlite:////var/lib/evaluator/evaluations.db)"
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
    return fields


def _evaluation(row: EvaluationRow) -> Evaluation:
    fields = {name: getattr(row, name) for name in _FIELDS}
    fields["status"] = Status(row.status)
    return Evaluation(**fields)


def _reason(err: DBAPIError) -> str:
    return str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
