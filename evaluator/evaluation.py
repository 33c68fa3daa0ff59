"""The values that cross from the evaluation loop to the store and from the store to the report."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: The evaluation name when --name is not given.
DEFAULT_NAME = "default"
#: Where a checkpoint kept the averages that were restored: TF1 `<var>/ExponentialMovingAverage`
#: names (Saver), Keras 3 `optimizer(use_ema=True)`, tf_keras `use_ema`, an eager
#: tf.train.ExponentialMovingAverage tracked in an object checkpoint; NO_EMA: the raw weights.
EMA_SOURCES = ("tf1-names", "keras", "tf-keras", "tf-ema")
NO_EMA = "none"
#: The largest step a row holds (a signed 64-bit integer); a larger `-N` suffix is no step.
MAX_STEP = 2**63 - 1


class Status(str, enum.Enum):
    """How one checkpoint's evaluation ended."""

    OK = "ok"
    #: Existed and was deleted (e.g. by `max_to_keep`) before it could be read, or never appeared
    #: within the grace period while newer checkpoints did.
    MISSING = "missing"
    #: Could not be restored or evaluated; `error` says why.
    FAILED = "failed"


@dataclass(frozen=True)
class Evaluation:
    """One checkpoint's result: exactly one row per (model_dir, name, checkpoint, fingerprint)."""

    model_dir: str
    #: The checkpoint prefix relative to `model_dir`, e.g. `model.ckpt-1200`.
    checkpoint: str
    step: int | None
    status: Status
    evaluated_at: datetime
    #: The evaluation's name (--name): several evaluations of one checkpoint live side by side.
    name: str = DEFAULT_NAME
    #: What the checkpoint's bytes were (a hash of its `.index`); "" when never read (`missing`, or
    #: rows older than fingerprints). A training restarted from scratch reuses names, not fingerprints.
    fingerprint: str = ""
    #: What the evaluation was asked to do (task, EMA, batch size), to warn when a name is reused.
    settings: dict[str, Any] | None = None
    accuracy: float | None = None
    loss: float | None = None
    examples: int | None = None
    #: Where the restored averages came from (EMA_SOURCES), "none" for raw weights, None when
    #: nothing was restored.
    ema_source: str | None = None
    restore_seconds: float | None = None
    eval_seconds: float | None = None
    device: str | None = None
    error: str | None = None
    #: When the daemon first saw the checkpoint listed in the state file.
    detected_at: datetime | None = None
    #: When its evaluation started (detection latency = started_at - the state file's rename).
    started_at: datetime | None = None

    @property
    def ema(self) -> bool | None:
        """Whether exponential-moving-average values were restored (None: nothing was restored)."""
        return None if self.ema_source is None else self.ema_source != NO_EMA

    @property
    def key(self) -> CheckpointKey:
        return CheckpointKey(self.model_dir, self.name, self.checkpoint, self.fingerprint)


@dataclass(frozen=True)
class Metrics:
    """One checkpoint's figures over the whole validation set."""

    accuracy: float
    loss: float
    examples: int
    seconds: float


@dataclass(frozen=True)
class CheckpointKey:
    """What identifies one evaluation of one checkpoint: its row's and its claim's key."""

    model_dir: str
    name: str
    checkpoint: str
    fingerprint: str


@dataclass(frozen=True)
class History:
    """What `report` shows: recent rows per (model directory, name) and each one's best row."""

    rows: list[Evaluation]
    best: dict[tuple[str, str], Evaluation] = field(default_factory=dict)

    def is_best(self, row: Evaluation) -> bool:
        """Whether `row` is its evaluation's best accuracy (lowest step on ties)."""
        best = self.best.get((row.model_dir, row.name))
        return best is not None and (best.checkpoint, best.fingerprint) == (row.checkpoint, row.fingerprint)
