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


TASK = KerasDigitsTask()
FUNCTIONAL = KerasDigitsTask("functional")
SUBCLASSED = KerasDigitsTask("subclassed")
