"""The evaluator's task for the Keras example: `evaluator watch DIR --task examples/keras/task.py:TASK`.

A TF2 task has `model()` (the trainer's model, built the same way) and `validation_data()`. The
evaluator restores each checkpoint into the model by object matching, with the optimizer's
exponential moving averages when the checkpoint has them.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "digits"))

import digits_data  # noqa: E402
import keras_model  # noqa: E402


class KerasDigitsTask:
    batch_size = 512
    #: The attribute name the trainer used in tf.train.Checkpoint(model=..., optimizer=...).
    checkpoint_root = "model"

    def __init__(self, kind: str = "sequential") -> None:
        self.kind = kind

    def model(self):  # type: ignore[no-untyped-def]
        return keras_model.build(self.kind)

    def validation_data(self):  # type: ignore[no-untyped-def]
        return digits_data.validation()


class KerasMetricsTask(KerasDigitsTask):
    """Built-in metrics by name, a Keras metric object, and two validation sets (clean, noisy)."""

    def metrics(self):  # type: ignore[no-untyped-def]  # a method: fresh Keras metric objects per build
        import keras

        return {"top_k_accuracy:3": "top_k_accuracy:3", "f1": "f1",
                "top2": keras.metrics.SparseTopKCategoricalAccuracy(k=2)}

    def validation_data(self):  # type: ignore[no-untyped-def]
        import numpy as np

        images, labels = digits_data.validation()
        noisy = np.clip(images + np.random.default_rng(0).normal(0.0, 0.35, images.shape), 0.0, 1.0)
        return {"clean": (images, labels), "noisy": (noisy.astype(np.float32), labels)}


TASK = KerasDigitsTask()
METRICS = KerasMetricsTask()
FUNCTIONAL = KerasDigitsTask("functional")
SUBCLASSED = KerasDigitsTask("subclassed")
