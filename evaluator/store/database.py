"""The database itself: which URL, the engine and its connections (SQLite pragmas, `BEGIN IMMEDIATE`,
PostgreSQL connect args), migrations and schema state, the SQLite file's identity, and the read and write
transactions that turn a driver's errors into the project's own. The other parts of the store are given
this engine; nothing here knows about claims, rows or reports.
"""

from __future__ import annotations

import enum
import functools
import importlib.resources
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session

from evaluator.errors import (
    DatabaseAway,
    DatabaseError,
    DatabaseGone,
    DatabaseUnavailable,
    SchemaMissing,
    StoreWriteError,
)
from evaluator.options import DB_ENV

#: The PostgreSQL advisory lock that serializes migrations (any number that is the evaluator's alone).
MIGRATION_LOCK = 0x65_76_61_6C  # "eval"
#: How long a SQLite connection waits for another's lock before failing (seconds).
SQLITE_BUSY_TIMEOUT = 15.0
#: Words of a driver's error that say the database is busy or out of reach, not misconfigured.
_TRANSIENT = ("locked", "busy", "could not connect", "connection refused", "server closed", "timeout",
              "timed out", "terminating connection", "connection reset", "the database system is",
              "connection to server", "connection is bad", "connection is lost", "server conn crashed",
              "consuming input failed", "the connection is closed", "connection already closed")
#: Words of a server's FATAL answer to a login that will not change by waiting.
_REFUSED = ("does not exist", "authentication failed", "pg_hba.conf", "not permitted to log in",
            "no password supplied", "permission denied for database", "password is required")


#: A Database, or the class built on it that `open` and `prepare` make (the Store).
D = TypeVar("D", bound="Database")


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


class Database:
    """The engine, the schema, and the transactions every part of the store runs in."""

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
            hint = "; pip install 'evaluator[postgres]'" if parsed.get_backend_name() == "postgresql" else ""
            raise DatabaseError(
                f"--db {describe(url)}: the driver for {parsed.drivername!r} is not installed ({err}){hint}"
            ) from err
        return parsed

    @staticmethod
    def check_durable(url: str) -> None:
        """DatabaseError for a database that forgets everything when the process ends."""
        parsed = Database.check_url(url)
        if parsed.get_backend_name() == "sqlite" and not _is_sqlite_file(parsed):
            raise DatabaseError(
                f"--db {describe(url)} is an in-memory database: every row would be lost when `watch` "
                "stops, and a restart would evaluate everything again. Give a file, e.g. "
                "sqlite:////var/lib/evaluator/evaluations.db (or omit --db for the default)"
            )

    @classmethod
    def prepare(cls: type[D], url: str, *, wait: float, on_retry: Any = None) -> D:
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
    def open(cls: type[D], url: str, *, create: bool, busy_timeout: float = SQLITE_BUSY_TIMEOUT) -> D:
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

    def __enter__(self: D) -> D:
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

    # -- transactions -----------------------------------------------------------------------

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
