"""The values that cross from the evaluation loop to the store and from the store to the report."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Iterable
from typing import Any

#: The evaluation name when --name is not given.
DEFAULT_NAME = "default"
#: Where a checkpoint kept the averages that were restored: TF1 `<var>/ExponentialMovingAverage`
#: names (Saver), Keras 3 `optimizer(use_ema=True)`, tf_keras `use_ema`, an eager
#: tf.train.ExponentialMovingAverage tracked in an object checkpoint; NO_EMA: the raw weights.
EMA_SOURCES = ("tf1-names", "keras", "tf-keras", "tf-ema")
NO_EMA = "none"
#: Higher is better / lower is better (a metric's goal).
MAX, MIN = "max", "min"
#: The count each validation set's metrics carry beside its values.
EXAMPLES = "examples"
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
    #: Every metric of every validation set ({set: {metric: value, "examples": n}}), the first set
    #: being the default one (whose accuracy and loss are the fields above).
    metrics: dict[str, dict[str, float]] | None = None
    #: Metric -> MAX or MIN: which way is better.
    goals: dict[str, str] | None = None
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

    def value(self, metric: str, dataset: str | None = None) -> float | None:
        """`metric` on `dataset` (default: the first validation set); `SET/METRIC` names the set too.
        Rows from before metrics have the columns only (accuracy, loss, examples of the first set)."""
        if dataset is None and "/" in metric:
            dataset, metric = metric.rsplit("/", 1)
        if self.metrics:
            values = self.metrics.get(dataset) if dataset is not None else next(iter(self.metrics.values()))
            return None if values is None else values.get(metric)
        if dataset is None and metric in ("accuracy", "loss", "examples"):
            return getattr(self, metric)  # type: ignore[no-any-return]
        return None


@dataclass(frozen=True)
class Metrics:
    """One checkpoint's figures: every metric of every validation set, each over the whole set."""

    #: Validation set -> metric -> value, in the task's order; the first set is the default one.
    values: dict[str, dict[str, float]]
    #: Validation set -> how many examples it had.
    counts: dict[str, int]
    seconds: float
    #: Metric -> MAX ("max": higher is better) or MIN.
    goals: dict[str, str] = field(default_factory=dict)
    #: Metrics left out because undefined on a set (AUC of a set with one class...).
    warnings: tuple[str, ...] = ()

    @property
    def default_set(self) -> str:
        return next(iter(self.values))

    @property
    def accuracy(self) -> float | None:
        return self.values[self.default_set].get("accuracy")

    @property
    def loss(self) -> float | None:
        return self.values[self.default_set].get("loss")

    @property
    def examples(self) -> int:
        return self.counts[self.default_set]

    def stored(self) -> dict[str, dict[str, float]]:
        """What a row keeps: each set's values and its `examples`."""
        return {name: {**values, EXAMPLES: self.counts[name]} for name, values in self.values.items()}


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

    rows: Iterable[Evaluation]
    best: dict[tuple[str, str], Evaluation] = field(default_factory=dict)
    #: The metric `best` was chosen by (None: accuracy, else loss) and on which set (None: the first).
    best_by: str | None = None
    dataset: str | None = None

    def is_best(self, row: Evaluation) -> bool:
        """Whether `row` is its evaluation's best accuracy (lowest step on ties)."""
        best = self.best.get((row.model_dir, row.name))
        return best is not None and (best.checkpoint, best.fingerprint) == (row.checkpoint, row.fingerprint)


@dataclass(frozen=True)
class Ranking:
    """An evaluation's best rows by a metric, best first (what the kept best must hold)."""

    #: The metric ranked by (`NAME` or `SET/NAME`) and its goal ("max"/"min"; None: no row has it).
    metric: str
    goal: str | None
    rows: list[Evaluation]


@dataclass(frozen=True)
class Worker:
    """A `watch` process as the `workers` table knows it."""

    owner: str
    host: str
    pid: int
    lease: float
    model_dirs: list[str]
    started_at: datetime
    evaluating: str | None = None
    evaluating_since: datetime | None = None
    heartbeat_at: datetime | None = None

    def alive(self, now: datetime) -> bool:
        """Whether its last heartbeat is younger than its lease (after that, its claims go too)."""
        return self.heartbeat_at is not None and (now - self.heartbeat_at).total_seconds() <= self.lease
