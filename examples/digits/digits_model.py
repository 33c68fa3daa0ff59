"""The classic two-layer network (like mnist_inference.py), shared by the trainer and the task.

Variable names (`layer1/weights`, ...) are what the checkpoint stores, so the evaluator's graph
must be built by this same code.
"""

from __future__ import annotations

import tensorflow as tf
from digits_data import CLASSES, PIXELS

HIDDEN_UNITS = 64


def inference(images: tf.Tensor, hidden_units: int = HIDDEN_UNITS) -> tf.Tensor:
    """Logits of shape [batch, 10] for a [batch, 64] batch of images."""
    v1 = tf.compat.v1
    with v1.variable_scope("layer1"):
        weights = v1.get_variable("weights", [PIXELS, hidden_units],
                                  initializer=v1.truncated_normal_initializer(stddev=0.1))
        biases = v1.get_variable("biases", [hidden_units], initializer=v1.zeros_initializer())
        hidden = tf.nn.relu(tf.matmul(images, weights) + biases)
    with v1.variable_scope("layer2"):
        weights = v1.get_variable("weights", [hidden_units, CLASSES],
                                  initializer=v1.truncated_normal_initializer(stddev=0.1))
        biases = v1.get_variable("biases", [CLASSES], initializer=v1.zeros_initializer())
        return tf.matmul(hidden, weights) + biases
