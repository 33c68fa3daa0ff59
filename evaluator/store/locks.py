"""Locks one worker at a time holds across the pool, for the work on files that the rows decide (the
best kept, TensorBoard's fill-in): whoever holds one sees every row the others recorded, and no other
worker writes those files meanwhile.

PostgreSQL: a session-level advisory lock, on a connection of its own, so the pool's workers on
every machine take turns (and a worker that dies lets go with its connection). SQLite is one machine's
database: an exclusive `flock` on a file beside it (`<db>.locks`), which a killed process lets go of
too; an in-memory database, one process, takes a thread lock.
"""

from __future__ import annotations

import fcntl
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from evaluator.errors import DatabaseAway
from evaluator.store.database import Database, _reason

#: The class of the PostgreSQL advisory locks taken by `exclusive` (one key per scope in it).
ACTIONS_LOCK = 0x61_63_74_73  # "acts"
#: What the SQLite lock file beside the database is called: `<db>` + this.
SQLITE_LOCK_SUFFIX = ".locks"

_memory_lock = threading.Lock()


class Locks(Database):
    """`exclusive(scope)`: one holder at a time of a scope (a string, e.g. a directory's path)."""

    @contextmanager
    def exclusive(self, scope: str) -> Iterator[None]:
        """Hold `scope` for the block; DatabaseAway when the server cannot be reached to take it."""
        if self.engine.dialect.name == "postgresql":
            with self._advisory(scope):
                yield
        elif self.sqlite_path is not None:
            with _flock(self.sqlite_path + SQLITE_LOCK_SUFFIX):
                yield
        else:
            with _memory_lock:
                yield

    @contextmanager
    def _advisory(self, scope: str) -> Iterator[None]:
        key = zlib.crc32(scope.encode()) - 2**31  # a signed 32-bit key (a collision only waits)
        try:
            connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(select(func.pg_advisory_lock(ACTIONS_LOCK, key)))
        except DBAPIError as err:
            self.engine.dispose()
            raise DatabaseAway(f"cannot take a lock in {self.url} for now: {_reason(err)}") from err
        try:
            yield
        finally:
            try:
                connection.execute(select(func.pg_advisory_unlock(ACTIONS_LOCK, key)))
                connection.close()
            except DBAPIError:  # the server went away: the lock went with the session
                connection.invalidate()


@contextmanager
def _flock(path: str) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
