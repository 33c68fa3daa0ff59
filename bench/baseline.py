"""What users run today, for comparison: the classic `mnist_eval.py` loop, and a minimal
hand-written restore + forward pass.

    python bench/baseline.py MODEL_DIR --interval 10 --out started.jsonl   # the classic loop
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1


class HandWritten:
    """The minimal loop: one graph, `Saver(ema.variables_to_restore())`, feed numpy batches."""

    def __init__(self, task: Any, config: Any, batch_size: int) -> None:
        self.features, self.labels = task.validation_data()
        self.batch_size = batch_size
        graph = tf.Graph()
        with graph.as_default():
            self.x = v1.placeholder(tf.float32, [None, *self.features.shape[1:]])
            self.y = v1.placeholder(tf.int64, [None])
            logits = task.inference(self.x)
            self.correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), self.y), tf.int64))
            self.loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=self.y, logits=logits))
            self.saver = v1.train.Saver(v1.train.ExponentialMovingAverage(0.99).variables_to_restore())
        self.graph = graph
        self.session = v1.Session(graph=graph, config=config)

    def __call__(self, path: str) -> tuple[float, float]:
        with self.graph.as_default():  # outside it, Saver.restore takes its eager path
            self.saver.restore(self.session, path)
        correct, loss = 0, 0.0
        for start in range(0, len(self.labels), self.batch_size):
            feed = {self.x: self.features[start:start + self.batch_size],
                    self.y: self.labels[start:start + self.batch_size]}
            batch_correct, batch_loss = self.session.run([self.correct, self.loss], feed)
            correct, loss = correct + int(batch_correct), loss + float(batch_loss)
        return correct / len(self.labels), loss / len(self.labels)


def classic_loop(model_dir: str, interval: float, out: str) -> None:
    """mnist_eval.py's evaluate(): every `interval` seconds, evaluate the latest checkpoint if new."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "digits"))
    import digits_data
    import digits_model

    images, labels = digits_data.validation()
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, 64])
        y = v1.placeholder(tf.int64, [None])
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(digits_model.inference(x), 1), y), tf.float32))
        saver = v1.train.Saver(v1.train.ExponentialMovingAverage(0.99).variables_to_restore())
        last = None
        with open(out, "a") as log:
            log.write(json.dumps({"event": "ready", "at": time.time()}) + "\n")
            log.flush()
            while True:
                with v1.Session() as session:
                    state = tf.train.get_checkpoint_state(model_dir)
                    if state and state.model_checkpoint_path and state.model_checkpoint_path != last:
                        started = time.time()
                        saver.restore(session, state.model_checkpoint_path)
                        value = session.run(accuracy, {x: images, y: labels})
                        last = state.model_checkpoint_path
                        log.write(json.dumps({"event": "evaluated", "checkpoint": os.path.basename(last),
                                              "started_at": started, "accuracy": float(value)}) + "\n")
                        log.flush()
                time.sleep(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    classic_loop(args.model_dir, args.interval, args.out)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
