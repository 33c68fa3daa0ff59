"""The evaluation model: the task's graph built once, a session on the chosen device, and the
restore + validate of one checkpoint into it (no graph growth from one checkpoint to the next)."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from evaluator.checkpoints import EMA_NAME, Checkpoint
from evaluator.errors import DeviceError
from evaluator.options import DEVICES
from evaluator.restore import Restorer
from evaluator.task import Task
from evaluator.validate import DEFAULT_BATCH_SIZE, Metrics, Progress, Validator


@dataclass(frozen=True)
class Placement:
    """Where the evaluation runs."""

    #: As recorded in each row: "cpu" or "gpu:0".
    name: str
    tf_device: str
    config: tf.compat.v1.ConfigProto


@dataclass(frozen=True)
class Outcome:
    """One checkpoint restored and validated."""

    step: int | None
    ema: bool
    restore_seconds: float
    metrics: Metrics


def select_device(requested: str) -> Placement:
    """`cpu`, `gpu` (DeviceError when none is visible) or `auto` (the GPU when there is one).

    On a GPU, memory growth is on: the evaluator takes what it uses, so it can share the card
    with the trainer.
    """
    if requested not in DEVICES:
        raise DeviceError(f"--device {requested!r}: choose one of {', '.join(DEVICES)}")
    if requested == "cpu":
        return _cpu()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        if requested == "gpu":
            raise DeviceError(
                "--device gpu: TensorFlow sees no GPU (check the driver, CUDA_VISIBLE_DEVICES, "
                "and that tensorflow[and-cuda] is installed), or use --device auto"
            )
        return _cpu()
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized by the task's own code: the session option below still applies
            pass
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    return Placement(name="gpu:0", tf_device="/device:GPU:0", config=config)


def _cpu() -> Placement:
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True, device_count={"GPU": 0})
    return Placement(name="cpu", tf_device="/device:CPU:0", config=config)


class EvalModel:
    """The task's inference and metrics in one graph and session; checkpoints are restored into it."""

    def __init__(self, graph: tf.Graph, session: tf.compat.v1.Session, restorer: Restorer,
                 validator: Validator, placement: Placement) -> None:
        self.graph = graph
        self.session = session
        self.restorer = restorer
        self.validator = validator
        self.placement = placement

    @classmethod
    def build(cls, task: Task, *, device: str = "auto", ema: bool = True,
              ema_name: str = EMA_NAME, batch_size: int = DEFAULT_BATCH_SIZE) -> EvalModel:
        """Build the graph once: the task's inference on the validation input, metrics, the EMA map."""
        placement = select_device(device)
        graph = tf.Graph()
        with graph.as_default():
            with tf.device(placement.tf_device):
                validator = Validator(task, batch_size=batch_size)
            restorer = Restorer(graph, ema=ema, ema_name=ema_name)
        session = tf.compat.v1.Session(graph=graph, config=placement.config)
        return cls(graph, session, restorer, validator, placement)

    @property
    def device(self) -> str:
        return self.placement.name

    @property
    def operations(self) -> int:
        """How many ops the graph holds (constant across checkpoints once the Saver exists)."""
        return len(self.graph.get_operations())

    def evaluate(self, checkpoint: Checkpoint, progress: Progress | None = None) -> Outcome:
        """Restore `checkpoint` and run the validation set; raises CheckpointError / CheckpointMissing."""
        info = self.restorer.restore(self.session, checkpoint)
        metrics = self.validator.run(self.session, progress)
        return Outcome(step=info.step, ema=info.ema, restore_seconds=info.seconds, metrics=metrics)

    def close(self) -> None:
        self.session.close()
