"""The validation sets: what a task's `validation_data()` returns, checked and put in one shape.

`validation_data()` returns one set, or a mapping from a name to a set; a set is a pair of numpy
arrays `(features, labels)` or a `tf.data.Dataset` of `(features, labels)` batches. Labels say
what the problem is: class indices (integers, [N]) or one-hot rows ([N, classes]) are a
classification, floating-point values ([N] or [N, 1]) a regression; a task's `problem` attribute
("classification" or "regression") overrides that. Both kinds of model read the sets from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from evaluator.errors import EvaluationFault, TaskError, first_line
from evaluator.metrics import CLASSIFICATION, REGRESSION

#: The name of the set when validation_data() returns one set rather than a mapping.
DEFAULT_SET = "validation"
PROBLEMS = (CLASSIFICATION, REGRESSION)


@dataclass(frozen=True)
class ValidationSet:
    """One named set: numpy arrays (size known) or a Dataset of batches with labels normalized
    (class indices as int64 [batch], regression targets as float32 [batch])."""

    name: str
    arrays: tuple[np.ndarray, np.ndarray] | None
    dataset: tf.data.Dataset | None
    feature_spec: tf.TensorSpec
    label_spec: tf.TensorSpec

    @property
    def size(self) -> int | None:
        return None if self.arrays is None else len(self.arrays[1])


@dataclass(frozen=True)
class ValidationSets:
    """Every set of a task, in the task's order (the first is the default one), and the problem."""

    sets: tuple[ValidationSet, ...]
    #: Whether the task named its sets (a mapping), rather than returning one set.
    named: bool
    problem: str

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sets]

    def empty(self, name: str) -> EvaluationFault:
        """The fault of a pass over set `name` that produced no examples (the task's doing)."""
        which = f"validation set {name!r}" if self.named else "the validation data"
        return EvaluationFault(f"{which} produced no examples: check validation_data()")


def load(task: Any) -> ValidationSets:
    """Call the task's validation_data() and check what it returns."""
    try:
        data = task.validation_data()
    except Exception as err:
        raise TaskError(f"validation_data() failed: {type(err).__name__}: {first_line(err)}") from err
    declared = getattr(task, "problem", None)
    if declared is not None and declared not in PROBLEMS:
        raise TaskError(f"the task's problem is {declared!r}: use 'classification' or 'regression'")
    return read(data, declared)


def read(data: Any, declared: str | None = None) -> ValidationSets:
    named = isinstance(data, Mapping)
    items = list(data.items()) if named else [(DEFAULT_SET, data)]
    if not items:
        raise TaskError("validation_data() returned an empty mapping: give at least one validation set")
    for name, _ in items:
        if not isinstance(name, str) or not name or "/" in name:
            raise TaskError(f"validation_data(): set names must be non-empty strings without '/', not {name!r}")
    problems = {name: declared or _problem_of(value, name) for name, value in items}
    if len(set(problems.values())) > 1:
        raise TaskError(f"validation_data(): the sets disagree on the problem ({problems}); set the task's problem")
    problem = next(iter(problems.values()))
    sets = tuple(_one(name, value, problem) for name, value in items)
    return ValidationSets(sets=sets, named=named, problem=problem)


def _one(name: str, value: Any, problem: str) -> ValidationSet:
    where = f"validation_data()[{name!r}]" if name != DEFAULT_SET else "validation_data()"
    if isinstance(value, tf.data.Dataset):
        spec = value.element_spec
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            raise TaskError(f"{where}: the Dataset must yield (features, labels) batches")
        dataset = value.map(lambda features, labels: (features, _labels_tensor(labels, problem)))
        features_spec, labels_spec = dataset.element_spec
        return ValidationSet(name, None, dataset, _batched(features_spec), _batched(labels_spec))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        features, labels = _arrays(value[0], value[1], problem, where)
        return ValidationSet(name, (features, labels), None,
                             tf.TensorSpec([None, *features.shape[1:]], tf.as_dtype(features.dtype)),
                             tf.TensorSpec([None], tf.as_dtype(labels.dtype)))
    verb = "must return" if name == DEFAULT_SET else "must be"
    raise TaskError(f"{where} {verb} (features, labels) numpy arrays or a tf.data.Dataset, "
                    f"not {type(value).__name__}")


def _problem_of(value: Any, name: str) -> str:
    """Integer or one-hot labels: a classification; floats, one per example: a regression."""
    if isinstance(value, tf.data.Dataset):
        spec = value.element_spec
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            return CLASSIFICATION  # _one says what is wrong
        dtype, shape = spec[1].dtype, spec[1].shape
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        labels = np.asarray(value[1])
        dtype, shape = tf.as_dtype(labels.dtype) if labels.dtype.kind in "iufb" else tf.int64, tf.TensorShape(labels.shape)
    else:
        return CLASSIFICATION
    if dtype.is_floating and not (shape.rank == 2 and shape[1] != 1):
        return REGRESSION
    return CLASSIFICATION


def _arrays(features: Any, labels: Any, problem: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.dtype == np.float64:  # like Keras: numpy's default float becomes float32
        features = features.astype(np.float32)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if problem == CLASSIFICATION and labels.ndim == 2:  # one-hot
        labels = labels.argmax(axis=1)
    if labels.ndim != 1:
        raise TaskError(f"{where}: labels must have shape [N] or [N, classes], not {list(labels.shape)}")
    if features.ndim < 1 or len(features) != len(labels):
        raise TaskError(f"{where}: {len(features) if features.ndim else 0} features but {len(labels)} labels")
    if len(labels) == 0:
        raise TaskError(f"{where}: the validation set is empty")
    if problem == REGRESSION:
        if labels.dtype.kind not in "iuf":
            raise TaskError(f"{where}: regression targets must be numbers, not {labels.dtype}")
        return features, labels.astype(np.float32)
    if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TaskError(f"{where}: labels must be integer class indices, not {labels.dtype} (a regression? set "
                        "the task's problem = 'regression')")
    return features, labels.astype(np.int64)


def _labels_tensor(labels: tf.Tensor, problem: str) -> tf.Tensor:
    if labels.shape.rank == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if problem == REGRESSION:
        return tf.cast(labels, tf.float32)
    if labels.shape.rank == 2:  # one-hot
        labels = tf.argmax(labels, axis=1)
    return tf.cast(labels, tf.int64)


def _batched(spec: tf.TensorSpec) -> tf.TensorSpec:
    """The spec with any batch size (a last, smaller batch is the same signature)."""
    if spec.shape.rank is None:
        return tf.TensorSpec(None, spec.dtype)
    return tf.TensorSpec([None, *spec.shape[1:]], spec.dtype)
