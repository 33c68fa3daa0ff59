"""The evaluator's tasks for the digits example.

- `TASK`: the default measures (accuracy and loss) on the held-out fifth of the digits:
  `evaluator watch DIR --task examples/digits/task.py:TASK`.
- `METRICS`: the task's own metrics on two validation sets, the clean images and the same images
  with noise: `evaluator watch DIR --task examples/digits/task.py:METRICS`.
"""

from __future__ import annotations

import digits_data
import digits_model
import numpy as np
import tensorflow as tf

#: The noise added to the pixels (in [0, 1]) of the "noisy" set: a shifted distribution.
NOISE = 0.35


class DigitsTask:
    """The same inference code as the trainer, and the held-out fifth of the digits."""

    batch_size = 512

    def inference(self, features):  # type: ignore[no-untyped-def]
        return digits_model.inference(features)

    def validation_data(self):  # type: ignore[no-untyped-def]
        return digits_data.validation()


def brier(labels, logits):  # type: ignore[no-untyped-def]
    """The Brier score of each example: squared distance from the softmax to the one-hot label."""
    probabilities = tf.nn.softmax(logits)
    one_hot = tf.one_hot(labels, tf.shape(logits)[1], dtype=probabilities.dtype)
    return tf.reduce_sum(tf.square(probabilities - one_hot), axis=1)


class DigitsMetricsTask(DigitsTask):
    """Top-3 accuracy, macro F1, AUC, the recall of the hardest digit and the Brier score, on the
    clean and on the noisy held-out images (accuracy and loss come with them)."""

    metrics = {
        "top_k_accuracy:3": "top_k_accuracy:3",
        "f1": "f1",
        "auc": "auc",
        "recall:8": "recall:8",
        "brier": (brier, "min"),
    }

    def validation_data(self):  # type: ignore[no-untyped-def]
        images, labels = digits_data.validation()
        noise = np.random.default_rng(0).normal(0.0, NOISE, images.shape)
        noisy = np.clip(images + noise, 0.0, 1.0).astype(np.float32)
        return {"clean": (images, labels), "noisy": (noisy, labels)}


TASK = DigitsTask()
METRICS = DigitsMetricsTask()
