"""The evaluation model, one module per kind of task behind one interface the service calls:

- `graph.py`: graph tasks, `inference(features) -> logits` in tf.compat.v1 code; Saver restores
  by variable name, EMA through `ExponentialMovingAverage.variables_to_restore()`.
- `artifact.py`: exported models (`--savedmodel` versions, `--frozen-graph` files), each
  evaluated in a graph of its own, with the graph tasks' validation.
- `keras.py`: TF2 tasks, `model()` returning a Keras 3 model or a tf.Module; restores by object
  matching, EMA found in the checkpoint's object graph, Keras weight files too.

The kind is chosen by which method the task has. Importing this package is cheap; `build`
imports TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from evaluator.checkpoints import EMA_NAME, Checkpoint
from evaluator.evaluation import Metrics

if TYPE_CHECKING:  # pragma: no cover
    from evaluator.data import ValidationSets
    from evaluator.metrics import Suite
    from evaluator.validate import Progress

DEFAULT_BATCH_SIZE = 1024


@dataclass(frozen=True)
class Outcome:
    """One checkpoint restored and validated."""

    step: int | None
    #: Where the restored averages came from (evaluation.EMA_SOURCES), or "none".
    ema_source: str
    restore_seconds: float
    metrics: Metrics
    #: Things worth a warning that did not stop the evaluation (averages that could not be used).
    warnings: tuple[str, ...] = ()


class EvalModel(Protocol):
    """What the service needs of an evaluation model, whatever the kind of task."""

    kind: str
    #: Whether `*.weights.h5` / `*.keras` files in the model directory are checkpoints for it.
    reads_weight_files: bool
    #: What its "checkpoints" are when they are exported models (sources/artifacts.py: "savedmodel",
    #: "frozen-graph"); None for checkpoints.
    artifact: str | None

    @property
    def device(self) -> str: ...

    @property
    def examples(self) -> int | None: ...

    #: The metrics computed on every set, and the sets.
    @property
    def suite(self) -> Suite: ...

    @property
    def sets(self) -> ValidationSets: ...

    def evaluate(self, checkpoint: Checkpoint, progress: Progress | None = None) -> Outcome: ...

    def describe(self) -> dict[str, Any]: ...

    def export(self, fmt: str, target: str, prefix: str, restore: bool = False) -> None:
        """Write `fmt` ("savedmodel", or "frozen" for graph tasks) of the checkpoint just evaluated
        (its files kept at `prefix`) to `target`; with `restore`, of the checkpoint at `prefix`
        whatever was evaluated last."""
        ...

    def close(self) -> None: ...


def build(task: Any, *, device: str = "auto", ema: bool = True, ema_name: str = EMA_NAME,
          batch_size: int = DEFAULT_BATCH_SIZE, metrics: tuple[str, ...] = ()) -> EvalModel:
    """Build the evaluation model for `task`'s kind, once per process; `metrics` are built-in
    metric names computed besides the defaults and the task's own."""
    from evaluator.models.artifact import ArtifactModel, ArtifactTask
    from evaluator.task import task_kind

    kind: Any
    if isinstance(task, ArtifactTask):  # --savedmodel, --frozen-graph (nocode.py)
        kind = ArtifactModel
    elif task_kind(task) == "keras":
        from evaluator.models.keras import KerasModel as kind
    else:
        from evaluator.models.graph import GraphModel as kind
    return kind.build(task, device=device, ema=ema, ema_name=ema_name, batch_size=batch_size, metrics=metrics)


def describe_metrics(model: EvalModel) -> dict[str, Any]:
    """What the start-up log says of a model's sets and metrics."""
    return {"examples": model.examples, "problem": model.sets.problem, "validation_sets": model.sets.names,
            "metrics": {name: goal for name, goal in model.suite.goals.items()}}
