"""The database schema: `evaluations`, one row per (model directory, evaluation name, checkpoint,
fingerprint), `metrics`, each one's figures per validation set and metric, `series`, which metrics
each evaluation has (what `report` reads instead of every metric), and `claims`, the checkpoints an evaluator is evaluating now (owner, expiry).

Changes here need a migration in `migrations/versions/` (`alembic revision --autogenerate`);
`tests/test_migrations.py` fails when the two disagree.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from evaluator.evaluation import Status

# Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATUSES = tuple(s.value for s in Status)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive, in UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class EvaluationRow(Base):
    """One evaluated (or missing, or failed) checkpoint."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("model_dir", "name", "checkpoint", "fingerprint"),
        # `report`'s questions, each answered by reading a few index entries whatever the history's size:
        # the last N rows by step (id breaks ties), the newest row (its first validation set), the best
        # accuracy or loss.
        Index(None, "model_dir", "name", "step", "id"),
        Index(None, "model_dir", "name", "id"),
        Index(None, "model_dir", "name", "status", "accuracy"),
        Index(None, "model_dir", "name", "status", "loss"),
        CheckConstraint(f"status IN {STATUSES!r}", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_dir: Mapped[str] = mapped_column(String(4096))
    name: Mapped[str] = mapped_column(String(255), server_default="default")
    checkpoint: Mapped[str] = mapped_column(String(4096))
    fingerprint: Mapped[str] = mapped_column(String(64), server_default="")
    step: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    accuracy: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    examples: Mapped[int | None] = mapped_column(Integer)
    #: Where the restored averages came from (evaluation.EMA_SOURCES), "none": raw weights.
    ema_source: Mapped[str | None] = mapped_column(String(32))
    restore_seconds: Mapped[float | None] = mapped_column(Float)
    eval_seconds: Mapped[float | None] = mapped_column(Float)
    device: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    detected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: JSON: the task, EMA and batch settings the row was evaluated with.
    settings: Mapped[str | None] = mapped_column(Text)


class MetricRow(Base):
    """One metric of one validation set of one evaluation (`examples` too, with no goal)."""

    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "dataset", "name"),
        # One evaluation's best row by any metric without reading all its rows (`report --best-by`).
        Index(None, "series_id", "value"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"))
    #: The validation set's name ("validation" when the task has one, unnamed).
    dataset: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    value: Mapped[float] = mapped_column(Float)
    #: "max" or "min": which way is better; None for `examples`.
    goal: Mapped[str | None] = mapped_column(String(8))
    #: The `series` row of (the evaluation's model_dir and name, dataset, name); set on every row
    #: (since schema 0007).
    series_id: Mapped[int | None] = mapped_column(Integer)


class SeriesRow(Base):
    """One metric of one validation set that rows of one evaluation (model directory and name) have
    in `metrics`: a few rows where `metrics` has one per row, kept by `Store.record_many` (which
    adds what is new) and `Store.forget` (which drops what no row has any more)."""

    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("model_dir", "name", "dataset", "metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_dir: Mapped[str] = mapped_column(String(4096))
    name: Mapped[str] = mapped_column(String(255))
    dataset: Mapped[str] = mapped_column(String(255))
    metric: Mapped[str] = mapped_column(String(255))


class ClaimRow(Base):
    """A checkpoint an evaluator is evaluating now; taken over by another once `expires_at` passes."""

    __tablename__ = "claims"
    __table_args__ = (UniqueConstraint("model_dir", "name", "checkpoint", "fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_dir: Mapped[str] = mapped_column(String(4096))
    name: Mapped[str] = mapped_column(String(255))
    checkpoint: Mapped[str] = mapped_column(String(4096))
    fingerprint: Mapped[str] = mapped_column(String(64))
    #: host:pid:random of the evaluator holding it.
    owner: Mapped[str] = mapped_column(String(255), index=True)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerRow(Base):
    """A `watch` process sharing the database: where it runs and what it does, renewed by its
    heartbeat (`evaluator workers`)."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: host:pid:random, as in claims.owner.
    owner: Mapped[str] = mapped_column(String(255), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    #: Seconds its claims live without a heartbeat: a heartbeat older than this means it is gone.
    lease: Mapped[float] = mapped_column(Float)
    #: JSON list of the model directories it watches.
    model_dirs: Mapped[str] = mapped_column(Text)
    #: The checkpoint (absolute path) it is evaluating now, and since when.
    evaluating: Mapped[str | None] = mapped_column(Text)
    evaluating_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
