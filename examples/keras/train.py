"""Train the digits network with Keras 3, saving checkpoints as TF2 users do.

    python examples/keras/train.py MODEL_DIR                     # custom loop, CheckpointManager, use_ema
    python examples/keras/train.py MODEL_DIR --fit weights.h5    # model.fit + ModelCheckpoint(*.weights.h5)
    python examples/keras/train.py MODEL_DIR --fit keras         # model.fit + ModelCheckpoint(*.keras)

The custom loop saves `tf.train.Checkpoint(model=model, optimizer=optimizer)` with a
CheckpointManager every --save-every steps; the optimizer keeps exponential moving averages of the
weights (`use_ema=True`), which the evaluator restores by default. Prints "saved PATH" per save.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "digits")]

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import digits_data  # noqa: E402
import keras_model  # noqa: E402


def train_loop(model_dir: str, *, steps: int = 300, save_every: int = 50, max_to_keep: int = 5,
               kind: str = "sequential", use_ema: bool = True, ema_momentum: float = 0.9, seed: int = 0,
               delay: float = 0.0, on_save: Callable[[str], None] | None = None) -> list[str]:
    """A custom training loop: tf.train.Checkpoint(model, optimizer) saved by a CheckpointManager."""
    keras.utils.set_random_seed(seed)
    images, labels = digits_data.training()
    model = keras_model.build(kind)
    optimizer = keras.optimizers.Adam(0.01, use_ema=use_ema, ema_momentum=ema_momentum)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=max_to_keep)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(features: tf.Tensor, targets: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            loss = loss_fn(targets, model(features, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))

    rng = np.random.default_rng(seed)
    saved = []
    for step in range(1, steps + 1):
        batch = rng.integers(0, len(labels), 64)
        train_step(images[batch], labels[batch])
        if step % save_every == 0 or step == steps:
            path = manager.save()  # numbered by save count; the step is the optimizer's iterations
            saved.append(path)
            if on_save is not None:
                on_save(path)
            if delay:
                time.sleep(delay)
    return saved


def train_fit(model_dir: str, *, epochs: int = 5, file_format: str = "weights.h5", kind: str = "sequential",
              seed: int = 0, on_save: Callable[[str], None] | None = None) -> list[str]:
    """model.fit with keras.callbacks.ModelCheckpoint writing one weight file per epoch."""
    keras.utils.set_random_seed(seed)
    images, labels = digits_data.training()
    model = keras_model.build(kind)
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    os.makedirs(model_dir, exist_ok=True)
    pattern = os.path.join(model_dir, "model.epoch-{epoch:02d}." + file_format)

    class Saved(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            if on_save is not None:
                on_save(pattern.format(epoch=epoch + 1))

    checkpointing = keras.callbacks.ModelCheckpoint(pattern, save_weights_only=file_format == "weights.h5")
    model.fit(images, labels, batch_size=64, epochs=epochs, verbose=0, callbacks=[checkpointing, Saved()])
    return [pattern.format(epoch=epoch) for epoch in range(1, epochs + 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--fit", choices=["weights.h5", "keras"], help="model.fit + ModelCheckpoint instead")
    parser.add_argument("--model", default="sequential", choices=["sequential", "named", "functional", "subclassed"])
    parser.add_argument("--steps", type=int, default=300, help="custom loop: training steps")
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--max-to-keep", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="--fit: epochs (one file each)")
    parser.add_argument("--no-ema", action="store_true", help="custom loop: no moving averages")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to sleep after each save")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def report(path: str) -> None:
        print(f"saved {path}", flush=True)

    if args.fit:
        train_fit(args.model_dir, epochs=args.epochs, file_format=args.fit, kind=args.model, seed=args.seed,
                  on_save=report)
    else:
        train_loop(args.model_dir, steps=args.steps, save_every=args.save_every, max_to_keep=args.max_to_keep,
                   kind=args.model, use_ema=not args.no_ema, seed=args.seed, delay=args.delay, on_save=report)


if __name__ == "__main__":
    main()
