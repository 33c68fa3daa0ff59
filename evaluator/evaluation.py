"""The values that cross from the evaluation loop to the store and from the store to the report."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Status(str, enum.Enum):
    """How one checkpoint's evaluation ended."""

    OK = "ok"
    #: Listed in the state file but deleted (e.g. by `max_to_keep`) before it could be read.
    MISSING = "missing"
    #: Could not be restored or evaluated; `error` says why.
    FAILED = "failed"


@dataclass(frozen=True)
class Evaluation:
    """One checkpoint's result: exactly one row per (model_dir, checkpoint)."""

    model_dir: str
    #: The checkpoint prefix relative to `model_dir`, e.g. `model.ckpt-1200`.
    checkpoint: str
    step: int | None
    status: Status
    evaluated_at: datetime
    accuracy: float | None = None
    loss: float | None = None
    examples: int | None = None
    #: Whether EMA shadow values were restored (None when nothing was restored).
    ema: bool | None = None
    restore_seconds: float | None = None
    eval_seconds: float | None = None
    device: str | None = None
    error: str | None = None
    #: When the daemon first saw the checkpoint listed in the state file.
    detected_at: datetime | None = None
    #: When its evaluation started (detection latency = started_at - the state file's rename).
    started_at: datetime | None = None


@dataclass(frozen=True)
class History:
    """What `report` shows: recent rows per model directory and each directory's best row."""

    rows: list[Evaluation]
    best: dict[str, Evaluation] = field(default_factory=dict)

    def is_best(self, row: Evaluation) -> bool:
        """Whether `row` is its model directory's best accuracy (lowest step on ties)."""
        best = self.best.get(row.model_dir)
        return best is not None and best.checkpoint == row.checkpoint
