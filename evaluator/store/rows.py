"""What the parts of the store share about rows: an Evaluation as `evaluations` and `metrics` rows and
back, and which row (or claim) stands for a checkpoint key, the rule that claims and records agree on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from evaluator.evaluation import EXAMPLES, MAX, CheckpointKey, Evaluation, Status
from evaluator.schema import ClaimRow, EvaluationRow, MetricRow

#: The Evaluation fields that are `evaluations` columns (metrics and goals live in `metrics`).
_FIELDS = [f.name for f in dataclasses.fields(Evaluation) if f.name not in ("metrics", "goals")]
#: Rows whose metrics are read in one query when a report streams (and the most names in one IN list).
_METRICS_CHUNK = 500


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
