"""A model of realistic size for the benchmark: a 3-layer MLP (3.7 M parameters with the default
widths) on a synthetic 784-feature problem, 10,000 validation examples, EMA like the classic trainer.

Used as `--task bench/workload.py:TASK`; $BENCH_WIDTH ("2048,1024") and $BENCH_EXAMPLES (10000)
shrink it for the smoke run.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

FEATURES = 784
CLASSES = 10
SEED = 1234


def widths() -> tuple[int, ...]:
    return tuple(int(w) for w in os.environ.get("BENCH_WIDTH", "2048,1024").split(","))


def examples() -> int:
    return int(os.environ.get("BENCH_EXAMPLES", "10000"))


def parameters() -> int:
    sizes = (FEATURES, *widths(), CLASSES)
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


def dataset(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features from a fixed random mixture; the label is the argmax of a fixed random projection."""
    rng = np.random.default_rng(seed)
    projection = np.random.default_rng(SEED).normal(size=(FEATURES, CLASSES)).astype(np.float32)
    features = rng.normal(size=(count, FEATURES)).astype(np.float32)
    return features, (features @ projection).argmax(axis=1).astype(np.int64)


def inference(features: tf.Tensor) -> tf.Tensor:
    v1 = tf.compat.v1
    hidden = features
    sizes = (FEATURES, *widths())
    for layer, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False), start=1):
        with v1.variable_scope(f"layer{layer}"):
            weights = v1.get_variable("weights", [fan_in, fan_out],
                                      initializer=v1.truncated_normal_initializer(stddev=fan_in ** -0.5))
            biases = v1.get_variable("biases", [fan_out], initializer=v1.zeros_initializer())
            hidden = tf.nn.relu(tf.matmul(hidden, weights) + biases)
    with v1.variable_scope("logits"):
        weights = v1.get_variable("weights", [sizes[-1], CLASSES],
                                  initializer=v1.truncated_normal_initializer(stddev=sizes[-1] ** -0.5))
        biases = v1.get_variable("biases", [CLASSES], initializer=v1.zeros_initializer())
        return tf.matmul(hidden, weights) + biases


class Workload:
    batch_size = 1000

    def inference(self, features: tf.Tensor) -> tf.Tensor:
        return inference(features)

    def validation_data(self) -> tuple[np.ndarray, np.ndarray]:
        return dataset(examples(), seed=2)


TASK = Workload()


def write_checkpoints(model_dir: str, count: int, steps_between: int = 2) -> list[str]:
    """Train a few steps between saves (EMA of the trainable variables), Saver(max_to_keep=count)."""
    v1 = tf.compat.v1
    features, labels = dataset(2000, seed=1)
    saved = []
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(SEED)
        x = v1.placeholder(tf.float32, [None, FEATURES])
        y = v1.placeholder(tf.int64, [None])
        step = v1.train.get_or_create_global_step()
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=inference(x)))
        minimize = v1.train.GradientDescentOptimizer(0.05).minimize(loss, global_step=step)
        with tf.control_dependencies([minimize]):
            train = v1.train.ExponentialMovingAverage(0.99, step).apply(v1.trainable_variables())
        saver = v1.train.Saver(max_to_keep=count, save_relative_paths=True)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            rng = np.random.default_rng(0)
            for _ in range(count):
                for _ in range(steps_between):
                    batch = rng.integers(0, len(labels), 100)
                    session.run(train, {x: features[batch], y: labels[batch]})
                saved.append(saver.save(session, os.path.join(model_dir, "model.ckpt"), global_step=step))
    return saved


class MetricsWorkload(Workload):
    """Five metrics (accuracy and loss, top-5 accuracy, macro precision and recall) on two sets."""

    metrics = ["top_k_accuracy:5", "precision", "recall"]

    def validation_data(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        features, labels = dataset(examples(), seed=2)
        return {"clean": (features, labels), "shifted": ((1.5 * features + 0.3).astype(np.float32), labels)}


METRICS_TASK = MetricsWorkload()
