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


class HandWrittenMetrics:
    """The same loop computing what MetricsWorkload asks for on each of its sets: per batch the
    correct, top-5 and loss sums and a confusion matrix, added up in numpy; macro precision and
    recall at the end."""

    def __init__(self, task: Any, config: Any, batch_size: int, classes: int) -> None:
        self.sets = task.validation_data()
        self.batch_size = batch_size
        self.classes = classes
        graph = tf.Graph()
        with graph.as_default():
            first = next(iter(self.sets.values()))[0]
            self.x = v1.placeholder(tf.float32, [None, *first.shape[1:]])
            self.y = v1.placeholder(tf.int64, [None])
            logits = task.inference(self.x)
            predicted = tf.argmax(logits, 1)
            self.fetches = (
                tf.reduce_sum(tf.cast(tf.equal(predicted, self.y), tf.int64)),
                tf.reduce_sum(tf.cast(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=self.y, logits=logits),
                                      tf.float64)),
                tf.reduce_sum(tf.cast(tf.math.in_top_k(targets=self.y, predictions=logits, k=5), tf.int64)),
                tf.math.confusion_matrix(self.y, predicted, num_classes=classes, dtype=tf.int64),
            )
            self.saver = v1.train.Saver(v1.train.ExponentialMovingAverage(0.99).variables_to_restore())
        self.graph = graph
        self.session = v1.Session(graph=graph, config=config)

    def __call__(self, path: str) -> dict[str, dict[str, float]]:
        with self.graph.as_default():
            self.saver.restore(self.session, path)
        found = {}
        for name, (features, labels) in self.sets.items():
            correct, loss, top5, confusion = 0, 0.0, 0, np.zeros((self.classes, self.classes), np.int64)
            for start in range(0, len(labels), self.batch_size):
                feed = {self.x: features[start:start + self.batch_size], self.y: labels[start:start + self.batch_size]}
                batch = self.session.run(self.fetches, feed)
                correct, loss, top5, confusion = correct + batch[0], loss + batch[1], top5 + batch[2], confusion + batch[3]
            true = np.diag(confusion).astype(np.float64)
            predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
            present = (predicted + actual) > 0
            precision = np.divide(true, predicted, out=np.zeros_like(true), where=predicted > 0)
            recall = np.divide(true, actual, out=np.zeros_like(true), where=actual > 0)
            found[name] = {"accuracy": correct / len(labels), "loss": loss / len(labels),
                           "top_k_accuracy:5": top5 / len(labels), "precision": float(precision[present].mean()),
                           "recall": float(recall[present].mean())}
        return found


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
