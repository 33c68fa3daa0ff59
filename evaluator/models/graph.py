"""Graph tasks (`inference(features) -> logits`, tf.compat.v1 code): the task's graph built once,
a session on the chosen device, and the restore (restore.py) + validate (validate.py) of one
checkpoint into it (no graph growth from one checkpoint to the next)."""

from __future__ import annotations

import tensorflow as tf

from evaluator.checkpoints import EMA_NAME, Checkpoint
from evaluator.evaluation import NO_EMA
from evaluator.data import ValidationSets
from evaluator.metrics import Suite
from evaluator.models import Outcome, describe_metrics
from evaluator.models.device import Placement, select_device
from evaluator.restore import Restorer
from evaluator.task import Task
from evaluator.validate import DEFAULT_BATCH_SIZE, Progress, Validator


class GraphModel:
    """The task's inference and metrics in one graph and session; checkpoints are restored into it."""

    kind = "graph"
    #: Graph tasks read TensorFlow checkpoints only (not Keras weight files).
    reads_weight_files = False
    artifact = None

    def __init__(self, graph: tf.Graph, session: tf.compat.v1.Session, restorer: Restorer,
                 validator: Validator, placement: Placement, task: Task | None = None, ema: bool = True,
                 ema_name: str = EMA_NAME) -> None:
        self.graph = graph
        self.session = session
        self.restorer = restorer
        self.validator = validator
        self.placement = placement
        self.task = task
        self.ema = ema
        self.ema_name = ema_name

    @classmethod
    def build(cls, task: Task, *, device: str = "auto", ema: bool = True, ema_name: str = EMA_NAME,
              batch_size: int = DEFAULT_BATCH_SIZE, metrics: tuple[str, ...] = ()) -> GraphModel:
        """Build the graph once: the task's inference on the validation input, metrics, the EMA map."""
        placement = select_device(device)
        graph = tf.Graph()
        with graph.as_default():
            with tf.device(placement.tf_device):
                validator = Validator(task, batch_size=batch_size, extra_metrics=metrics)
            restorer = Restorer(graph, ema=ema, ema_name=ema_name)
        session = tf.compat.v1.Session(graph=graph, config=placement.config)
        return cls(graph, session, restorer, validator, placement, task, ema, ema_name)

    @property
    def device(self) -> str:
        return self.placement.name

    @property
    def operations(self) -> int:
        """How many ops the graph holds (constant across checkpoints once the Saver exists)."""
        return len(self.graph.get_operations())

    def evaluate(self, checkpoint: Checkpoint, progress: Progress | None = None) -> Outcome:
        """Restore `checkpoint` and run the validation set; raises CheckpointError / CheckpointMissing."""
        verify = getattr(self.task, "verify_checkpoint", None)
        if verify is not None:  # the task's own check that the checkpoint fits its graph (--meta-graph)
            verify(checkpoint.path)
        info = self.restorer.restore(self.session, checkpoint)
        metrics = self.validator.run(self.session, progress)
        return Outcome(step=info.step, ema_source="tf1-names" if info.ema else NO_EMA,
                       restore_seconds=info.seconds, metrics=metrics, warnings=metrics.warnings)

    @property
    def examples(self) -> int | None:
        return self.validator.examples

    @property
    def suite(self) -> Suite:
        return self.validator.suite

    @property
    def sets(self) -> ValidationSets:
        return self.validator.sets

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "device": self.device, "operations": self.operations, **describe_metrics(self)}

    def export(self, fmt: str, target: str, prefix: str, restore: bool = True) -> None:
        """A SavedModel or a frozen GraphDef of the checkpoint at `prefix`, restored as evaluated
        (models/export.py), from a serving graph of its own (a features placeholder, the inference):
        always from the files, so `restore` changes nothing."""
        from evaluator.models.export import graph_export

        graph_export(fmt, self.task, self.validator.sets.sets[0].feature_spec, prefix, ema=self.ema,
                     ema_name=self.ema_name, target=target)

    def close(self) -> None:
        self.session.close()
