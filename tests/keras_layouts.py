"""Trainers for the TF2 checkpoint layouts the examples don't write: tf_keras (Keras 2) `fit` with
`ModelCheckpoint(save_weights_only=True)`, an eager `tf.train.ExponentialMovingAverage` tracked in
the checkpoint, and a plain `tf.Module`. Each returns the saved paths; tiny and fast."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "examples" / "keras"), str(ROOT / "examples" / "digits")]

import digits_data  # noqa: E402


def tf_keras_model():  # type: ignore[no-untyped-def]
    import tf_keras

    return tf_keras.Sequential([tf_keras.layers.Dense(32, activation="relu", input_shape=(64,)),
                                tf_keras.layers.Dense(10)])


def train_tf_keras(model_dir: Path, epochs: int = 4, use_ema: bool = True) -> list[str]:
    """tf_keras fit + ModelCheckpoint(save_weights_only=True): TF checkpoints whose root is the model,
    a state file listing only the newest, the optimizer's averages under its `average/` names."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    images, labels = digits_data.training()
    model = tf_keras_model()
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01, use_ema=use_ema, ema_momentum=0.9),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pattern = str(model_dir / "cp-{epoch:02d}")
    model.fit(images, labels, batch_size=64, epochs=epochs, verbose=0,
              callbacks=[tf_keras.callbacks.ModelCheckpoint(pattern, save_weights_only=True)])
    return [pattern.format(epoch=e) for e in range(1, epochs + 1)]


def train_tf_ema(model_dir: Path, steps: int = 60, save_every: int = 20, kernels_only: bool = False) -> list[str]:
    """Keras 3 model, plain SGD, an eager tf.train.ExponentialMovingAverage whose averages are tracked
    in the checkpoint (`tf.train.Checkpoint(model=..., averages=[...])`), and a `step` variable.
    With `kernels_only`, only the kernels are averaged (the biases have none)."""
    import keras
    import keras_model

    keras.utils.set_random_seed(0)
    images, labels = digits_data.training()
    model = keras_model.build("functional")
    optimizer = keras.optimizers.SGD(0.3)
    ema = tf.train.ExponentialMovingAverage(0.9)
    averaged = [v.value for v in model.trainable_variables if not (kernels_only and v.path.endswith("bias"))]
    ema.apply(averaged)
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, step=step, averages=[ema.average(v) for v in averaged])
    manager = tf.train.CheckpointManager(checkpoint, str(model_dir), max_to_keep=10)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    saved = []
    for _ in range(steps):
        batch = rng.integers(0, len(labels), 64)
        with tf.GradientTape() as tape:
            loss = loss_fn(labels[batch], model(images[batch], training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        ema.apply(averaged)
        step.assign_add(1)
        if int(step) % save_every == 0:
            saved.append(manager.save(checkpoint_number=int(step)))
    return saved


class Dense(tf.Module):
    def __init__(self, inputs: int, outputs: int, seed: int) -> None:
        super().__init__()
        self.w = tf.Variable(tf.random.stateless_normal([inputs, outputs], [seed, 0]) * 0.1)
        self.b = tf.Variable(tf.zeros([outputs]))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return x @ self.w + self.b


class ModuleNet(tf.Module):
    """The digits network as a plain tf.Module (no Keras)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = Dense(64, 32, 1)
        self.out = Dense(32, 10, 2)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.out(tf.nn.relu(self.hidden(x)))


def train_module(model_dir: Path, steps: int = 60, save_every: int = 20) -> list[str]:
    images, labels = digits_data.training()
    net = ModuleNet()
    global_step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=net, global_step=global_step), str(model_dir), 10)
    rng = np.random.default_rng(0)
    saved = []
    for _ in range(steps):
        batch = rng.integers(0, len(labels), 64)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels[batch], net(images[batch])))
        for var, grad in zip(net.trainable_variables, tape.gradient(loss, net.trainable_variables)):
            var.assign_sub(0.3 * grad)
        global_step.assign_add(1)
        if int(global_step) % save_every == 0:
            saved.append(manager.save())
    return saved
