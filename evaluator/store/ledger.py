"""The ledger: the rows written (one per checkpoint, with its metrics; a writer's claim dropped in the same
transaction), forgotten for a retry, and read back for the loop, with what keeps `series` right meanwhile.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, exists, func, insert, select
from sqlalchemy.orm import Session

from evaluator.evaluation import CheckpointKey, Evaluation, Status
from evaluator.schema import ClaimRow, EvaluationRow, MetricRow, SeriesRow
from evaluator.store.database import Database, _upsert
from evaluator.store.rows import _METRICS_CHUNK, _evaluation, _metric_rows, _recorded_keys, _row_fields

#: The class of the PostgreSQL advisory locks on one evaluation's `series` rows (`_lock_series`).
SERIES_LOCK = 0x73_65_72_69  # "seri"


class Ledger(Database):
    """Recording rows, forgetting them, and what the loop asks of them."""

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
                # The tables, not the ORM classes: Core sends a batch as one multi-row INSERT ... RETURNING
                # (insertmanyvalues), where the ORM's bulk path sends one statement per row.
                ids = session.execute(insert(EvaluationRow.__table__).returning(EvaluationRow.id, sort_by_parameter_order=True),
                                      [_row_fields(evaluation) for evaluation in new]).scalars().all()
                metrics = [(row_id, evaluation) for row_id, evaluation in zip(ids, new) if evaluation.metrics]
                if metrics:
                    series = _series_ids(session, [evaluation for _, evaluation in metrics])
                    session.execute(insert(MetricRow.__table__), [
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
