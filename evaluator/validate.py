"""One pass over the validation set in the evaluation graph: top-1 accuracy and mean cross-entropy.

The metric ops are built once, on the task's logits. Numpy data is fed in batches through
placeholders; a tf.data.Dataset is read through an initializable iterator, re-initialized for
every checkpoint. Sums are taken in float64 and divided once, so the figures equal an
independent computation over the same predictions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from evaluator.evaluation import Metrics
from evaluator.errors import Abandoned, CheckpointError, EvaluationFault, TaskError, first_line
from evaluator.task import Task

#: Called after each batch with the number of examples done so far; may raise Abandoned.
Progress = Callable[[int], None]
DEFAULT_BATCH_SIZE = 1024


class _ArrayInput:
    """Numpy (features, labels), fed batch by batch through placeholders."""

    def __init__(self, features: Any, labels: Any, batch_size: int) -> None:
        self._features, self._labels = _check_arrays(features, labels)
        self._batch_size = batch_size
        self.features = tf.compat.v1.placeholder(
            self._features.dtype, [None, *self._features.shape[1:]], name="features"
        )
        self.labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")

    @property
    def size(self) -> int | None:
        return len(self._labels)

    def feeds(self, session: tf.compat.v1.Session) -> Iterator[dict[Any, Any]]:
        for start in range(0, len(self._labels), self._batch_size):
            end = start + self._batch_size
            yield {self.features: self._features[start:end], self.labels: self._labels[start:end]}


class _DatasetInput:
    """A tf.data.Dataset of (features, labels) batches, read through an initializable iterator."""

    def __init__(self, dataset: tf.data.Dataset) -> None:
        self._iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
        element = self._iterator.get_next()
        if not isinstance(element, (tuple, list)) or len(element) != 2:
            raise TaskError("validation_data(): the Dataset must yield (features, labels) batches")
        self.features, labels = element
        if labels.shape.rank == 2:  # one-hot
            labels = tf.argmax(labels, axis=1)
        self.labels = tf.cast(labels, tf.int64)

    @property
    def size(self) -> int | None:
        return None

    def feeds(self, session: tf.compat.v1.Session) -> Iterator[dict[Any, Any]]:
        session.run(self._iterator.initializer)
        while True:  # ends when session.run raises OutOfRangeError
            yield {}


class Validator:
    """The metric ops on the task's logits; call inside the evaluation graph (and device scope)."""

    def __init__(self, task: Task, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        try:
            data = task.validation_data()
        except Exception as err:
            raise TaskError(f"validation_data() failed: {type(err).__name__}: {err}") from err
        self._input = _make_input(data, batch_size)
        try:
            logits = task.inference(self._input.features)
        except Exception as err:
            raise TaskError(f"inference() failed to build the graph: {type(err).__name__}: {err}") from err
        logits = _check_logits(logits)
        labels = self._input.labels
        predictions = tf.argmax(logits, axis=1, output_type=tf.int64)
        self._correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.int64))
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        self._loss_sum = tf.reduce_sum(tf.cast(cross_entropy, tf.float64))
        self._count = tf.size(labels, out_type=tf.int64)

    @property
    def examples(self) -> int | None:
        """The validation set's size when known before a pass (numpy data)."""
        return self._input.size

    def run(self, session: tf.compat.v1.Session, progress: Progress | None = None) -> Metrics:
        """One pass over the validation set with the variables as they are in `session`.

        The checkpoint was restored already, so what fails here is the task's or the machine's
        doing (EvaluationFault), except results that are not finite (CheckpointError: the weights).
        """
        try:
            metrics = self._run(session, progress)
        except (Abandoned, EvaluationFault):
            raise
        except Exception as err:
            raise EvaluationFault(f"validation failed: {type(err).__name__}: {first_line(err)}") from err
        if not math.isfinite(metrics.loss):
            raise CheckpointError(
                f"the loss is not finite ({metrics.loss}): the weights (or the validation data) hold NaN or "
                "infinity; diverged training?"
            )
        return metrics

    def _run(self, session: tf.compat.v1.Session, progress: Progress | None) -> Metrics:
        start = time.perf_counter()
        correct, loss_sum, count = 0, 0.0, 0
        fetches = (self._correct, self._loss_sum, self._count)
        for feed in self._input.feeds(session):
            try:
                batch_correct, batch_loss, batch_count = session.run(fetches, feed_dict=feed)
            except tf.errors.OutOfRangeError:
                break
            correct += int(batch_correct)
            loss_sum += float(batch_loss)
            count += int(batch_count)
            if progress is not None:
                progress(count)
        if count == 0:
            raise EvaluationFault("the validation data produced no examples: check validation_data()")
        return Metrics(
            accuracy=correct / count,
            loss=loss_sum / count,
            examples=count,
            seconds=time.perf_counter() - start,
        )


def _make_input(data: Any, batch_size: int) -> _ArrayInput | _DatasetInput:
    if isinstance(data, tf.data.Dataset):
        return _DatasetInput(data)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _ArrayInput(data[0], data[1], batch_size)
    raise TaskError(
        "validation_data() must return (features, labels) numpy arrays or a tf.data.Dataset, "
        f"not {type(data).__name__}"
    )


def _check_arrays(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.dtype == np.float64:  # like Keras: numpy's default float becomes float32
        features = features.astype(np.float32)
    if labels.ndim == 2:  # one-hot
        labels = labels.argmax(axis=1)
    if labels.ndim != 1:
        raise TaskError(f"validation_data(): labels must have shape [N] or [N, classes], not {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TaskError(f"validation_data(): labels must be integer class indices, not {labels.dtype}")
    if features.ndim < 1 or len(features) != len(labels):
        raise TaskError(
            f"validation_data(): {len(features) if features.ndim else 0} features but {len(labels)} labels"
        )
    if len(labels) == 0:
        raise TaskError("validation_data(): the validation set is empty")
    return features, labels.astype(np.int64)


def _check_logits(logits: Any) -> tf.Tensor:
    if not isinstance(logits, tf.Tensor):
        raise TaskError(f"inference() must return a logits tensor, not {type(logits).__name__}")
    if logits.shape.rank is not None and logits.shape.rank != 2:
        raise TaskError(f"inference() must return logits of shape [batch, classes], not {logits.shape}")
    if not logits.dtype.is_floating:
        raise TaskError(f"inference() must return floating-point logits, not {logits.dtype.name}")
    return logits
