"""The evaluation history in SQL: engine set-up, schema migrations, claims, recording rows, queries.

SQLite (the default) runs in WAL mode with a busy timeout, and write transactions start with
`BEGIN IMMEDIATE`, so `report` can read while `watch` writes without "database is locked".
A checkpoint is claimed (a row in `claims` with an owner and an expiry) before it is evaluated, and
its result replaces the claim in one transaction: two evaluators never evaluate one checkpoint
twice while the claim's owner lives, and one whose owner died is taken over once it expires.

One module per concern, each part given the engine by building on `Database`; dependencies point
one way (workqueue, ledger, history -> database, rows; never back), and none imports TensorFlow:
  database.py   URLs, the engine and its connections, migrations, the file's identity, transactions
  rows.py       an Evaluation as rows and back; which row or claim stands for a checkpoint key
  workqueue.py  claims, leases and workers
  ledger.py     recording and forgetting rows, and keeping `series` right meanwhile
  history.py    the queries of `report`, `plot` and the export
  locks.py      one worker at a time across the pool, for the files the rows decide (the kept best)
"""

from __future__ import annotations

from evaluator.errors import SchemaMissing
from evaluator.store.database import (
    MIGRATION_LOCK,
    SQLITE_BUSY_TIMEOUT,
    SQLITE_SUFFIXES,
    Database,
    SchemaState,
    alembic_config,
    default_url,
    describe,
    resolve_url,
)
from evaluator.store.history import HistoryQueries
from evaluator.store.ledger import SERIES_LOCK, Ledger
from evaluator.store.locks import ACTIONS_LOCK, Locks
from evaluator.store.workqueue import Claim, WorkQueue

__all__ = [
    "ACTIONS_LOCK", "MIGRATION_LOCK", "SERIES_LOCK", "SQLITE_BUSY_TIMEOUT", "SQLITE_SUFFIXES", "Claim", "Database", "SchemaMissing",
    "SchemaState", "Store", "alembic_config", "default_url", "describe", "resolve_url",
]


class Store(WorkQueue, Ledger, HistoryQueries, Locks):
    """Records evaluations and answers the questions the loop and the report ask."""
