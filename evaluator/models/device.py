"""Where the evaluation runs: the CPU, or the GPU when there is one (memory growth on, so the
evaluator shares the card with the trainer)."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from evaluator.errors import DeviceError
from evaluator.options import DEVICES


@dataclass(frozen=True)
class Placement:
    """Where the evaluation runs."""

    #: As recorded in each row: "cpu" or "gpu:0".
    name: str
    tf_device: str
    config: tf.compat.v1.ConfigProto


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
