"""Train the digits network the classic TF1 way and save checkpoints as it goes.

EMA of the trainable variables keyed on `global_step`, `tf.compat.v1.train.Saver(max_to_keep=N)`,
`saver.save(..., global_step=...)`: exactly what `evaluator watch` is built for.

    python examples/digits/train.py /tmp/digits --steps 3000 --save-every 100 --delay 0.5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import digits_data  # noqa: E402
import digits_model  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MOVING_AVERAGE_DECAY = 0.99


def train(model_dir: str, *, steps: int = 2000, save_every: int = 100, max_to_keep: int = 5,
          batch_size: int = 64, learning_rate: float = 0.3, ema_decay: float = MOVING_AVERAGE_DECAY,
          delay: float = 0.0, seed: int = 0, relative_paths: bool = False,
          hidden_units: int = digits_model.HIDDEN_UNITS, resume: bool = True,
          on_save: Callable[[str], None] | None = None) -> list[str]:
    """Train until global step `steps`, saving every `save_every`; returns the saved prefixes in order.

    Like a real job, it resumes from the directory's latest checkpoint (unless resume=False), and
    its Saver keeps managing the checkpoints already listed (max_to_keep counts them).
    """
    v1 = tf.compat.v1
    images, labels = digits_data.training()
    rng = np.random.default_rng(seed)
    os.makedirs(model_dir, exist_ok=True)
    saved: list[str] = []
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [None, digits_data.PIXELS], name="x-input")
        y = v1.placeholder(tf.int64, [None], name="y-input")
        global_step = v1.train.get_or_create_global_step()
        logits = digits_model.inference(x, hidden_units=hidden_units)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        train_step = v1.train.GradientDescentOptimizer(learning_rate).minimize(loss, global_step=global_step)
        ema = v1.train.ExponentialMovingAverage(ema_decay, global_step)
        with tf.control_dependencies([train_step]):
            train_op = ema.apply(v1.trainable_variables())
        saver = v1.train.Saver(max_to_keep=max_to_keep, save_relative_paths=relative_paths)
        with v1.Session(config=v1.ConfigProto(device_count={"GPU": 0})) as session:
            session.run(v1.global_variables_initializer())
            state = tf.train.get_checkpoint_state(model_dir) if resume else None
            if state is not None:
                saver.restore(session, state.model_checkpoint_path)
                saver.recover_last_checkpoints(list(state.all_model_checkpoint_paths))
            first = int(session.run(global_step)) + 1
            for step in range(first, steps + 1):
                batch = rng.integers(0, len(labels), batch_size)
                session.run(train_op, {x: images[batch], y: labels[batch]})
                if step % save_every == 0 or step == steps:
                    path = saver.save(session, os.path.join(model_dir, "model.ckpt"), global_step=global_step)
                    saved.append(path)
                    if on_save is not None:
                        on_save(path)
                    if delay:
                        time.sleep(delay)
    return saved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--steps", type=int, default=2000, help="train until this global step")
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--max-to-keep", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to sleep after each save")
    parser.add_argument("--learning-rate", type=float, default=0.3)
    parser.add_argument("--hidden-units", type=int, default=digits_model.HIDDEN_UNITS)
    parser.add_argument("--relative-paths", action="store_true", help="write relative paths in the state file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="start from step 0 even if checkpoints exist")
    args = parser.parse_args(argv)
    train(args.model_dir, steps=args.steps, save_every=args.save_every, max_to_keep=args.max_to_keep,
          delay=args.delay, learning_rate=args.learning_rate, hidden_units=args.hidden_units,
          relative_paths=args.relative_paths, seed=args.seed, resume=not args.fresh,
          on_save=lambda path: print(f"saved {path}", flush=True))


if __name__ == "__main__":
    main()
