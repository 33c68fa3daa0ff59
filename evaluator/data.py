"""The validation sets: what a task's `validation_data()` returns, checked and put in one shape.

`validation_data()` returns one set, or a mapping from a name to a set; a set is a pair of numpy
arrays `(features, labels)` or a `tf.data.Dataset` of `(features, labels)` batches. Labels say
what the problem is: class indices (integers, [N]) or one-hot rows ([N, classes]) are a
classification; floats with fractions ([N] or [N, 1]) or rows that are not one-hot ([N, k]) a
regression with 1 or k targets per example. Floats with whole values, one per example, are
either: the model's output width decides (`settle`, once the model is built): class indices for
several outputs, a regression for one. A task's `problem` attribute ("classification" or
"regression") overrides all that. A Dataset's labels are judged by its first batch. Both kinds of
model read the sets from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import structlog
import tensorflow as tf

from evaluator.errors import EvaluationFault, TaskError, first_line
from evaluator.metrics import CLASSIFICATION, REGRESSION

#: The name of the set when validation_data() returns one set rather than a mapping.
DEFAULT_SET = "validation"
PROBLEMS = (CLASSIFICATION, REGRESSION)
#: What a set's labels are, as read: class indices (integers, or one-hot rows), floats with whole
#: values one per example (classes or targets: the model's width decides), or regression targets.
CLASSES, WHOLE, TARGETS = "classes", "whole", "targets"


@dataclass(frozen=True)
class ValidationSet:
    """One named set: numpy arrays (size known) or a Dataset of batches with labels normalized
    (class indices as int64 [batch]; floats as float32 [batch], or [batch, k] for k targets)."""

    name: str
    arrays: tuple[np.ndarray, np.ndarray] | None
    dataset: tf.data.Dataset | None
    feature_spec: tf.TensorSpec
    label_spec: tf.TensorSpec
    #: CLASSES, WHOLE or TARGETS.
    kind: str = CLASSES
    #: The labels' columns as given: one-hot classes, or targets per example; None for [N] / [N, 1].
    columns: int | None = None
    #: The smallest and the largest label of a WHOLE set (a Dataset's: its first batch's).
    span: tuple[float, float] | None = None

    @property
    def size(self) -> int | None:
        return None if self.arrays is None else len(self.arrays[1])

    @property
    def where(self) -> str:
        return _where(self.name)


@dataclass(frozen=True)
class ValidationSets:
    """Every set of a task, in the task's order (the first is the default one), and the problem."""

    sets: tuple[ValidationSet, ...]
    #: Whether the task named its sets (a mapping), rather than returning one set.
    named: bool
    problem: str
    #: A regression's targets per example (k for [N, k] labels).
    targets: int = 1
    #: Whether the task said what the problem is (its `problem` attribute).
    declared: bool = False
    #: Whether the problem was decided with the model's outputs (`settle`).
    settled: bool = False

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
    """The sets as read; the problem is final once `settle` has seen the model's outputs."""
    named = isinstance(data, Mapping)
    items = list(data.items()) if named else [(DEFAULT_SET, data)]
    if not items:
        raise TaskError("validation_data() returned an empty mapping: give at least one validation set")
    for name, _ in items:
        if not isinstance(name, str) or not name or "/" in name:
            raise TaskError(f"validation_data(): set names must be non-empty strings without '/', not {name!r}")
    sets = tuple(_one(name, value, declared) for name, value in items)
    kinds = {s.kind for s in sets}
    if declared is not None:
        problem = declared
    elif {CLASSES, TARGETS} <= kinds:
        problems = {s.name: {CLASSES: CLASSIFICATION, TARGETS: REGRESSION}.get(s.kind, "either") for s in sets}
        raise TaskError(f"validation_data(): the sets disagree on the problem ({problems}); set the task's problem")
    elif CLASSES in kinds:  # floats with whole values beside class indices: classes too (settle checks them)
        problem = CLASSIFICATION
        sets = tuple(_as_classes(s) if s.kind == WHOLE else s for s in sets)
    else:  # floats with whole values only: a regression unless the model's width says classes (settle)
        problem = REGRESSION
    targets = {s.columns or 1 for s in sets}
    if problem == REGRESSION and len(targets) > 1:
        raise TaskError(f"validation_data(): the sets disagree on the targets per example "
                        f"({ {s.name: s.columns or 1 for s in sets} }): give each the same")
    return ValidationSets(sets=sets, named=named, problem=problem,
                          targets=targets.pop() if problem == REGRESSION else 1, declared=declared is not None)


def settle(sets: ValidationSets, shape: Any, dtype: Any, who: str) -> ValidationSets:
    """The problem decided with the model's outputs (`shape` [batch, outputs], or [batch]), before
    any checkpoint: TaskError when the labels and the outputs do not fit each other (one-hot or
    target columns other than the outputs, floats that can be neither classes nor targets)."""
    shape, dtype = tf.TensorShape(shape), tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise TaskError(f"{who} must return floating-point outputs, not {dtype.name}")
    width = shape[1] if shape.rank == 2 else 1 if shape.rank == 1 else None
    whole = [s for s in sets.sets if s.kind == WHOLE]
    problem = sets.problem
    if len(whole) == len(sets.sets) and not sets.declared and width not in (None, 1):
        problem = CLASSIFICATION  # whole floats and several outputs: class indices (checked below)
    if problem == CLASSIFICATION:
        if shape.rank is not None and shape.rank != 2:
            raise TaskError(f"{who} must return logits of shape [batch, classes], not {shape}")
        for s in sets.sets:
            if s.columns is not None and width is not None and s.columns != width and (s.columns, width) != (2, 1):
                raise TaskError(f"{s.where}: the labels are one-hot rows of {s.columns} classes but {who} has "
                                f"{width} outputs: give one column per output (or class indices), or a model "
                                f"with {s.columns} outputs")
        spans = [s.span for s in whole if s.span is not None]
        if spans:
            low, high = min(lo for lo, _ in spans), max(hi for _, hi in spans)
            classes = max(width or 2, 2)
            if width is not None and (low < 0 or high >= classes):
                raise TaskError(f"{whole[0].where}: the labels are floats with whole values {int(low)}.."
                                f"{int(high)}, one per example, but {who} has {width} outputs: give class indices "
                                f"0..{classes - 1}, or set the task's problem = 'regression' for a model with "
                                "one output per target")
            log = structlog.get_logger("evaluator.data")
            log.info("labels are floats with whole values: taken as class indices; set the task's problem = "
                     "'regression' if they are targets", validation_sets=[s.name for s in whole], classes=classes)
        return replace(sets, problem=CLASSIFICATION, settled=True)
    if shape.rank is not None and shape.rank not in (1, 2):
        raise TaskError(f"{who} must return outputs of shape [batch, targets] or [batch], not {shape}")
    if width is not None and width != sets.targets:
        k, where = sets.targets, sets.sets[0].where
        if sets.declared:
            what = f"the task's problem is 'regression' with {k} target{'s' * (k != 1)} per example"
        elif k > 1:
            what = f"{where}: the labels are [N, {k}] rows that are not one-hot: {k} targets per example"
        else:
            what = (f"{where}: the labels are floats with fractional values, one target per example, which makes "
                    "this a regression")
        advice = "" if sets.declared else ", or class labels as integers (or one-hot rows)"
        raise TaskError(f"{what}, but {who} has {width} outputs: give a model with {k} output{'s' * (k != 1)}{advice}")
    return replace(sets, problem=REGRESSION, settled=True)


def _where(name: str) -> str:
    return f"validation_data()[{name!r}]" if name != DEFAULT_SET else "validation_data()"


def _one(name: str, value: Any, declared: str | None) -> ValidationSet:
    where = _where(name)
    if isinstance(value, tf.data.Dataset):
        spec = value.element_spec
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            raise TaskError(f"{where}: the Dataset must yield (features, labels) batches")
        kind, columns, span = _dataset_kind(value, spec[1], declared, where)
        dataset = value.map(lambda features, labels: (features, _labels_tensor(labels, kind)))
        features_spec, labels_spec = dataset.element_spec
        return ValidationSet(name, None, dataset, _batched(features_spec), _batched(labels_spec),
                             kind, columns, span)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        features, labels, kind, columns, span = _arrays(value[0], value[1], declared, where)
        return ValidationSet(name, (features, labels), None,
                             tf.TensorSpec([None, *features.shape[1:]], tf.as_dtype(features.dtype)),
                             tf.TensorSpec([None, *labels.shape[1:]], tf.as_dtype(labels.dtype)),
                             kind, columns, span)
    verb = "must return" if name == DEFAULT_SET else "must be"
    raise TaskError(f"{where} {verb} (features, labels) numpy arrays or a tf.data.Dataset, "
                    f"not {type(value).__name__}")


def _as_classes(validation: ValidationSet) -> ValidationSet:
    """A WHOLE set's labels as int64 class indices, like the other sets'."""
    if validation.arrays is not None:
        features, labels = validation.arrays
        return replace(validation, arrays=(features, labels.astype(np.int64)),
                       label_spec=tf.TensorSpec([None], tf.int64))
    assert validation.dataset is not None
    dataset = validation.dataset.map(lambda features, labels: (features, tf.cast(labels, tf.int64)))
    return replace(validation, dataset=dataset, label_spec=_batched(dataset.element_spec[1]))


def _kind(labels: np.ndarray, declared: str | None) -> tuple[str, int | None, tuple[float, float] | None]:
    """What labels ([N] or [N, k], k > 1) are: (CLASSES, WHOLE or TARGETS; columns; a WHOLE span)."""
    columns = labels.shape[1] if labels.ndim == 2 else None
    numeric = labels.dtype.kind in "iufb"
    if declared == REGRESSION:
        return TARGETS, columns, None
    if labels.ndim == 2:
        return (CLASSES if declared == CLASSIFICATION or not numeric or _one_hot(labels) else TARGETS), columns, None
    if declared == CLASSIFICATION or labels.dtype.kind != "f":
        return CLASSES, None, None
    if len(labels) and np.all(np.mod(labels, 1) == 0):
        return WHOLE, None, (float(labels.min()), float(labels.max()))
    return TARGETS, None, None


def _one_hot(labels: np.ndarray) -> bool:
    """Whether every row is zeros and one 1."""
    return bool(np.all((labels == 0) | (labels == 1)) and np.all(labels.sum(axis=1) == 1))


def _dataset_kind(dataset: tf.data.Dataset, spec: Any, declared: str | None,
                  where: str) -> tuple[str, int | None, tuple[float, float] | None]:
    """A Dataset's labels judged by their spec, and by the first batch where the spec cannot tell."""
    shape = spec.shape
    columns = shape[1] if shape.rank == 2 and shape[1] != 1 else None
    if declared == REGRESSION:
        return TARGETS, columns, None
    if declared == CLASSIFICATION or (not spec.dtype.is_floating and (shape.rank != 2 or shape[1] == 1)):
        return CLASSES, columns, None  # class indices: nothing to read
    first = _first_labels(dataset, where)
    if first is None or first.ndim not in (1, 2):  # nothing to judge by: as the spec says
        return (TARGETS if spec.dtype.is_floating and columns is None else CLASSES), columns, None
    if first.ndim == 2 and first.shape[1] == 1:
        first = first[:, 0]
    return _kind(first, None)


def _first_labels(dataset: tf.data.Dataset, where: str) -> np.ndarray | None:
    """The labels of a Dataset's first batch (None when it has none)."""
    try:
        if tf.executing_eagerly():
            for _, labels in dataset.take(1):
                return np.asarray(labels)
            return None
        # A graph task's Dataset lives in its graph: read one batch in a session of its own, on the CPU.
        with tf.device("/device:CPU:0"):
            iterator = tf.compat.v1.data.make_initializable_iterator(dataset.take(1))
            _, labels = iterator.get_next()
        config = tf.compat.v1.ConfigProto(allow_soft_placement=True, device_count={"GPU": 0})
        with tf.compat.v1.Session(graph=labels.graph, config=config) as session:
            session.run(iterator.initializer)
            try:
                return np.asarray(session.run(labels))
            except tf.errors.OutOfRangeError:
                return None
    except Exception as err:
        raise TaskError(f"{where}: reading the first batch failed: {type(err).__name__}: {first_line(err)}") from err


def _arrays(features: Any, labels: Any, declared: str | None,
            where: str) -> tuple[np.ndarray, np.ndarray, str, int | None, tuple[float, float] | None]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.dtype == np.float64:  # like Keras: numpy's default float becomes float32
        features = features.astype(np.float32)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2):
        raise TaskError(f"{where}: labels must have shape [N], [N, classes] (one-hot) or [N, targets], "
                        f"not {list(labels.shape)}")
    if features.ndim < 1 or len(features) != len(labels):
        raise TaskError(f"{where}: {len(features) if features.ndim else 0} features but {len(labels)} labels")
    if len(labels) == 0:
        raise TaskError(f"{where}: the validation set is empty")
    kind, columns, span = _kind(labels, declared)
    if kind != CLASSES:
        if labels.dtype.kind not in "iuf":
            raise TaskError(f"{where}: regression targets must be numbers, not {labels.dtype}")
        return features, labels.astype(np.float32), kind, columns, span
    if labels.ndim == 2:  # one-hot
        labels = labels.argmax(axis=1)
    if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TaskError(f"{where}: labels must be integer class indices, not {labels.dtype} (a regression? set "
                        "the task's problem = 'regression')")
    return features, labels.astype(np.int64), kind, columns, span


def _labels_tensor(labels: tf.Tensor, kind: str) -> tf.Tensor:
    if labels.shape.rank == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if kind != CLASSES:
        return tf.cast(labels, tf.float32)
    if labels.shape.rank == 2:  # one-hot
        labels = tf.argmax(labels, axis=1)
    return tf.cast(labels, tf.int64)


def _batched(spec: tf.TensorSpec) -> tf.TensorSpec:
    """The spec with any batch size (a last, smaller batch is the same signature)."""
    if spec.shape.rank is None:
        return tf.TensorSpec(None, spec.dtype)
    return tf.TensorSpec([None, *spec.shape[1:]], spec.dtype)
