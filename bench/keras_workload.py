"""The benchmark's model of realistic size in TF2 form: the same MLP as workload.py (3.7 M parameters
with the default widths), as a Keras 3 functional model trained with `Adam(use_ema=True)` and saved
by a CheckpointManager. `--task bench/keras_workload.py:TASK`; $BENCH_WIDTH and $BENCH_EXAMPLES shrink it.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from bench.workload import CLASSES, FEATURES, dataset, examples, widths


def build() -> keras.Model:
    inputs = keras.Input((FEATURES,))
    hidden = inputs
    for width in widths():
        hidden = keras.layers.Dense(width, activation="relu")(hidden)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(hidden))


class KerasWorkload:
    batch_size = 1000

    def model(self) -> keras.Model:
        return build()

    def validation_data(self) -> tuple[np.ndarray, np.ndarray]:
        return dataset(examples(), seed=2)


TASK = KerasWorkload()


def write_checkpoints(model_dir: str, count: int, steps_between: int = 2) -> list[str]:
    """A custom loop with Adam(use_ema=True), `tf.train.Checkpoint(model, optimizer)` every few steps."""
    keras.utils.set_random_seed(1234)
    features, labels = dataset(2000, seed=1)
    model = build()
    optimizer = keras.optimizers.Adam(1e-3, use_ema=True, ema_momentum=0.9)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer), model_dir,
                                         max_to_keep=count)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    rng = np.random.default_rng(0)
    saved = []
    for _ in range(count):
        for _ in range(steps_between):
            batch = rng.integers(0, len(labels), 100)
            train_step(features[batch], labels[batch])
        saved.append(manager.save())
    os.sync()
    return saved


class HandWrittenEager:
    """What a TF2 user writes by hand: `ckpt.read(path).expect_partial()` and a tf.function forward pass."""

    def __init__(self, batch_size: int) -> None:
        self.model = build()
        self.checkpoint = tf.train.Checkpoint(model=self.model)
        features, labels = dataset(examples(), seed=2)
        self.batches = [(tf.constant(features[i:i + batch_size]), tf.constant(labels[i:i + batch_size]))
                        for i in range(0, len(labels), batch_size)]
        self.count = len(labels)

        @tf.function
        def sums(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            logits = self.model(x, training=False)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.int64))
            return correct, tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

        self.sums = sums

    def __call__(self, path: str) -> tuple[float, float]:
        self.checkpoint.read(path).expect_partial()
        correct, loss = 0, 0.0
        for x, y in self.batches:
            batch_correct, batch_loss = self.sums(x, y)
            correct, loss = correct + int(batch_correct), loss + float(batch_loss)
        return correct / self.count, loss / self.count
