"""Metrics: the built-ins by name, a task's own, and their totals over a whole validation set.

Every metric is reduced in two halves. Per batch, inside the evaluation graph or the traced
tf.function, to tensors: sums, counts per class, or the scores AUC ranks. On the host, those are
added up across batches (float64) and turned into one value at the end. A value is therefore the
whole set's, weighted by examples, never a mean of batch means, and one implementation serves
graph and TF2 tasks alike.

Built-in names (`--metric NAME`, or a task's ``metrics``):

==================  ====  ===============================================================
accuracy            max   top-1 (one logit: logit > 0, or probability > 0.5)
loss                min   cross-entropy (softmax, or sigmoid for one logit); regression: MSE
top_k_accuracy:K    max   the label is among the K highest outputs
precision[:C]       max   of class C; without C: class 1 for two classes, else the macro
recall[:C]          max   average over the classes that occur (labels or predictions), as
f1[:C]              max   scikit-learn does
auc[:C]             max   exact ROC AUC (ranks, ties averaged): class 1 against 0 for two
                          classes, class C against the rest, else the macro one-vs-rest
mae, mse, rmse      min   regression errors (several targets per example: over all of them)
==================  ====  ===============================================================

Defaults: ``accuracy`` and ``loss`` for classification, ``loss`` (MSE) and ``mae`` for regression.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from evaluator.errors import CheckpointError, TaskError
from evaluator.evaluation import EXAMPLES, MAX, MIN

CLASSIFICATION, REGRESSION = "classification", "regression"
DEFAULTS = {CLASSIFICATION: ("accuracy", "loss"), REGRESSION: ("loss", "mae")}
#: Words in a task metric's name that say lower is better, when the task does not say.
_FALLING = ("loss", "error", "mae", "mse", "rmse", "distance", "perplexity")


@dataclass(frozen=True)
class Problem:
    """What the outputs mean: classes (`outputs` [batch, classes]; 1 is one logit) or a regression
    (`outputs` [batch] or [batch, targets], as the labels)."""

    kind: str
    classes: int | None = None
    #: Whether classification outputs are logits (the task's `from_logits`, default True).
    from_logits: bool = True

    @property
    def binary(self) -> bool:
        return self.kind == CLASSIFICATION and self.classes in (1, 2)


# -- the metrics ----------------------------------------------------------------------------------

class Metric:
    """One metric: per-batch statistic tensors, and the value from their totals."""

    goal = MAX
    #: Statistics concatenated across batches rather than summed.
    concatenated: frozenset[str] = frozenset()
    #: Which problems it applies to.
    problems: tuple[str, ...] = (CLASSIFICATION,)

    def check(self, problem: Problem) -> None:
        """Raise TaskError when the metric cannot apply to `problem`."""

    def statistics(self, labels: tf.Tensor, outputs: tf.Tensor, problem: Problem) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def value(self, totals: dict[str, np.ndarray], examples: int) -> float:
        raise NotImplementedError


class _Accuracy(Metric):
    def statistics(self, labels: tf.Tensor, outputs: tf.Tensor, problem: Problem) -> dict[str, tf.Tensor]:
        hits = tf.equal(predicted_classes(outputs, problem), labels)
        return {"correct": tf.reduce_sum(tf.cast(hits, tf.int64))}

    def value(self, totals: dict[str, np.ndarray], examples: int) -> float:
        return int(totals["correct"]) / examples


class _Loss(Metric):
    goal = MIN
    problems = (CLASSIFICATION, REGRESSION)

    def statistics(self, labels: tf.Tensor, outputs: tf.Tensor, problem: Problem) -> dict[str, tf.Tensor]:
        return {"sum": tf.reduce_sum(tf.cast(losses(labels, outputs, problem), tf.float64))}

    def value(self, totals: dict[str, np.ndarray], examples: int) -> float:
        return float(totals["sum"]) / examples


class _TopK(Metric):
    def __init__(self, k: int) -> None:
        self.k = k

    def check(self, problem: Problem) -> None:
        if problem.classes is not None and problem.classes < 2:
            raise TaskError("top_k_accuracy needs outputs with one column per class, not one logit")

    def statistics(self, labels: tf.Tensor, outputs: tf.Tensor, problem: Problem) -> dict[str, tf.Tensor]:
        hits = tf.math.in_top_k(targets=labels, predictions=tf.cast(outputs, tf.float32), k=self.k)
        return {"correct": tf.reduce_sum(tf.cast(hits, tf.int64))}

    def value(self, totals: dict[str, np.ndarray], examples: int) -> float:
        return int(totals["correct"]) / examples


class _PerClass(Metric):
    """precision, recall and f1: true positives, predictions and labels counted per class."""

    def __init__(self, which: str, cls: int | None) -> None:
        self.which = which
        self.cls = cls

    def check(self, problem: Problem) -> None:
        _check_class(self.cls, problem, self.which)

    def statistics(self, labels: tf.Tensor, outputs: tf.Tensor, problem: Problem) -> dict[str, tf.Tensor]:
        classes = _width(problem)
        predicted = predicted_classes(outputs, problem)
        hits = tf.boolean_mask(labels, tf.equal(predicted, labels))
        return {"true": _counts(hits, classes), "predicted": _counts(predicted, classes),
                "actual": _counts(labels, classes)}

    def value(self, totals: dict[str, np.ndarray], examples: int) -> float:
        true, predicted, actual = (totals[k].astype(np.float64) for k in ("true", "predicted", "actual"))
        if self.which == "precision":
            per_class = _ratio(true, predicted)
        elif self.which == "recall":
            per_class = _ratio(true, actual)
        else:
            per_class = _ratio(2 * true, predicted + actual)
        if self.cls is not None:
            return float(per_class[self.cls])
        if len(per_class) == 2:
            return float(per_class[1])
        present = (predicted + actual) > 0
        return float(per_class[present].mean()) if present.any() else math.nan


class _AUC(Metric):
    """Exact ROC AUC: the outputs are kept (per example) and ranked at the end."""

    concatenated = frozenset({"scores", "labels"})

    def __init__(self, cls: int | None) -> None:
        self.cls = cls

    def check(self, problem: Problem) -> None:
        _check_class(self.cls, problem, "auc")

    def statistics(self, labels: tf.Tensor, outputs: tf.Tensor, problem: Problem) -> dict[str, tf.Tensor]:
        outputs = tf.cast(outputs, tf.float64)
        if problem.classes == 1:  # the logit (or probability) ranks like the probability
            scores = outputs[:, 0]
        elif problem.from_logits:
            scores = tf.nn.softmax(outputs, axis=1)
        else:
            scores = outputs
        return {"scores": scores, "labels": labels}

    def value(self, totals: dict[str, np.ndarray], examples: int) -> float:
        scores, labels = totals["scores"], totals["labels"]
        if scores.ndim == 1:
            return roc_auc(scores, labels == 1)
        if self.cls is not None:
            return roc_auc(scores[:, self.cls], labels == self.cls)
        if scores.shape[1] == 2:
            return roc_auc(scores[:, 1], labels == 1)
        per_class = [roc_auc(scores[:, c], labels == c) for c in range(scores.shape[1])]
        return float(np.mean(per_class))


class _Error(Metric):
    goal = MIN
    problems = (REGRESSION,)

    def __init__(self, which: str) -> None:
        self.which = which

    def statistics(self, labels: tf.Tensor, outputs: tf.Tensor, problem: Problem) -> dict[str, tf.Tensor]:
        error = regression_errors(labels, outputs)
        if self.which == "mae":
            return {"sum": tf.reduce_sum(_per_example(tf.abs(error)))}
        return {"sum": tf.reduce_sum(_per_example(tf.square(error)))}

    def value(self, totals: dict[str, np.ndarray], examples: int) -> float:
        mean = float(totals["sum"]) / examples
        return math.sqrt(mean) if self.which == "rmse" else mean


class _PerExample(Metric):
    """A task's function `(labels, outputs) -> per-example values`, averaged over the whole set."""

    problems = (CLASSIFICATION, REGRESSION)

    def __init__(self, name: str, function: Callable[..., Any], goal: str) -> None:
        self.name = name
        self.function = function
        self.goal = goal

    def call(self, labels: tf.Tensor, outputs: tf.Tensor) -> Any:
        try:
            return self.function(labels, outputs)
        except Exception as err:
            raise TaskError(f"metric {self.name!r} failed: {type(err).__name__}: {err}") from err

    def statistics(self, labels: tf.Tensor, outputs: tf.Tensor, problem: Problem) -> dict[str, tf.Tensor]:
        return self.reduce(self.call(labels, outputs))

    def reduce(self, values: Any) -> dict[str, tf.Tensor]:
        if isinstance(values, (tuple, list)):
            raise TaskError(f"metric {self.name!r} returned a {type(values).__name__}: a tf.compat.v1.metrics-"
                            "style (value, update_op) pair is for graph tasks; a metric function returns one "
                            "value per example, shape [batch]")
        values = tf.convert_to_tensor(values)
        if values.shape.rank != 1:
            raise TaskError(f"metric {self.name!r} returned shape {values.shape}: a metric function returns one "
                            "value per example, shape [batch] (it is averaged over the whole set)")
        return {"sum": tf.reduce_sum(tf.cast(values, tf.float64))}

    def value(self, totals: dict[str, np.ndarray], examples: int) -> float:
        return float(totals["sum"]) / examples


@dataclass
class Streaming:
    """A task's stateful metric: a `keras.metrics.Metric` (TF2 tasks) or a tf.compat.v1.metrics-style
    function returning (value, update_op) (graph tasks). The model kind drives it."""

    name: str
    obj: Any
    goal: str


def _parse_builtin(spec: str) -> Metric:
    name, _, argument = spec.partition(":")
    number = int(argument) if re.fullmatch(r"\d{1,6}", argument) else None
    if argument and number is None:
        raise TaskError(f"metric {spec!r}: {name}'s argument must be a whole number (e.g. {name}:1)")
    if name in ("accuracy", "loss", "mae", "mse", "rmse") and not argument:
        return {"accuracy": _Accuracy, "loss": _Loss}.get(name, lambda: _Error(name))()
    if name == "top_k_accuracy":
        if number is None or number < 1:
            raise TaskError("top_k_accuracy needs K >= 1, e.g. top_k_accuracy:5")
        return _TopK(number)
    if name in ("precision", "recall", "f1"):
        return _PerClass(name, number)
    if name == "auc":
        return _AUC(number)
    raise TaskError(f"unknown metric {spec!r}: the built-in ones are {', '.join(BUILTIN_NAMES)}; a task can "
                    "define its own (see `evaluator watch --help`)")


BUILTIN_NAMES = ("accuracy", "loss", "top_k_accuracy:K", "precision[:C]", "recall[:C]", "f1[:C]", "auc[:C]",
                 "mae", "mse", "rmse")


# -- the suite of one task ------------------------------------------------------------------------

@dataclass
class Suite:
    """The metrics a run computes on every validation set: reduced (built-ins and per-example
    functions) and streaming (a task's stateful metric objects)."""

    problem: Problem
    #: "graph" or "keras": which streaming metrics it takes.
    kind: str = "keras"
    reduced: dict[str, Metric] = field(default_factory=dict)
    streaming: dict[str, Streaming] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [*self.reduced, *self.streaming]

    @property
    def goals(self) -> dict[str, str]:
        return {**{n: m.goal for n, m in self.reduced.items()}, **{n: s.goal for n, s in self.streaming.items()}}

    def labels(self, labels: tf.Tensor) -> tf.Tensor:
        """The labels as the metrics take them: a classification's as int64 class indices (floats
        with whole values are class indices too)."""
        if self.problem.kind == CLASSIFICATION and labels.dtype != tf.int64:
            return tf.cast(labels, tf.int64)
        return labels

    def statistics(self, labels: tf.Tensor, outputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """Every reduced metric's per-batch tensors, keyed `<metric>/<statistic>`, and the count."""
        labels = self.labels(labels)
        found = {EXAMPLES: tf.shape(labels, out_type=tf.int64)[0]}
        for name, metric in list(self.reduced.items()):
            if isinstance(metric, _PerExample):
                result = metric.call(labels, outputs)
                if self.kind == "graph" and isinstance(result, (tuple, list)) and len(result) == 2:
                    # tf.compat.v1.metrics-style: (value, update_op) over local variables, streamed.
                    del self.reduced[name]
                    self.streaming[name] = Streaming(name, tuple(result), metric.goal)
                    continue
                statistics = metric.reduce(result)
            else:
                statistics = metric.statistics(labels, outputs, self.problem)
            for key, tensor in statistics.items():
                found[f"{name}/{key}"] = tensor
        return found

    def totals(self) -> Totals:
        return Totals(self)


class Totals:
    """One validation set's statistics added up on the host, batch by batch."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.sums: dict[str, np.ndarray] = {}
        self.parts: dict[str, list[np.ndarray]] = {}
        self.concatenated = {f"{name}/{key}" for name, metric in suite.reduced.items()
                             for key in metric.concatenated}

    @property
    def examples(self) -> int:
        return int(self.sums.get(EXAMPLES, 0))

    def add(self, batch: Mapping[str, Any]) -> None:
        for key, value in batch.items():
            value = np.asarray(value)
            if key in self.concatenated:
                self.parts.setdefault(key, []).append(value)
            elif key in self.sums:
                self.sums[key] = self.sums[key] + value
            else:
                self.sums[key] = value.astype(np.float64 if value.dtype.kind == "f" else np.int64)

    def values(self) -> dict[str, float]:
        """Each reduced metric's value over the whole set (NaN where undefined)."""
        examples = self.examples
        found = {}
        for name, metric in self.suite.reduced.items():
            prefix = f"{name}/"
            mine = {key[len(prefix):]: value for key, value in self.sums.items() if key.startswith(prefix)}
            mine.update({key[len(prefix):]: np.concatenate(parts)
                         for key, parts in self.parts.items() if key.startswith(prefix)})
            found[name] = metric.value(mine, examples)
        return found


def suite(task: Any, problem: Problem, extra: tuple[str, ...] = (), *, streaming_kind: str) -> Suite:
    """The defaults for `problem`, then `extra` built-in names (`--metric`), then the task's own
    (`metrics`: a list of built-in names, or a mapping from a name to a built-in name, a function
    `(labels, outputs) -> per-example values`, a streaming metric, or a (metric, "max"|"min") pair).
    """
    found = Suite(problem, streaming_kind)
    specs: dict[str, Any] = {name: name for name in DEFAULTS[problem.kind]}
    specs.update({name: name for name in extra})
    specs.update(_task_specs(task))
    for name, spec in specs.items():
        _add(found, name, spec, streaming_kind)
    return found


def _task_specs(task: Any) -> dict[str, Any]:
    declared = getattr(task, "metrics", None)
    if declared is None:
        return {}
    if callable(declared) and not isinstance(declared, (Mapping, list, tuple)):
        try:
            declared = declared()
        except Exception as err:
            raise TaskError(f"metrics() failed: {type(err).__name__}: {err}") from err
    if isinstance(declared, Mapping):
        bad = [key for key in declared if not isinstance(key, str) or not key or "/" in key]
        if bad:
            raise TaskError(f"metrics: names must be non-empty strings without '/', not {bad[0]!r}")
        return dict(declared)
    if isinstance(declared, (list, tuple)) and all(isinstance(name, str) for name in declared):
        return {name: name for name in declared}
    raise TaskError("metrics must be a list of built-in metric names or a mapping from a name to a metric "
                    f"(a built-in name, a function, a metric object), not {type(declared).__name__}")


def _add(found: Suite, name: str, spec: Any, streaming_kind: str) -> None:
    goal = None
    if isinstance(spec, tuple) and len(spec) == 2 and spec[1] in (MAX, MIN):
        spec, goal = spec
    found.reduced.pop(name, None)
    found.streaming.pop(name, None)
    if isinstance(spec, str):
        metric = _parse_builtin(spec)
        if found.problem.kind not in metric.problems:
            raise TaskError(f"metric {name!r} ({spec}) does not apply to a {found.problem.kind} task "
                            f"(defaults there: {', '.join(DEFAULTS[found.problem.kind])})")
        metric.check(found.problem)
        if goal is not None:
            metric.goal = goal
        found.reduced[name] = metric
        return
    goal = goal or guess_goal(name)
    if callable(getattr(spec, "update_state", None)) and callable(getattr(spec, "result", None)):
        if streaming_kind != "keras":
            raise TaskError(f"metric {name!r}: a keras.metrics.Metric needs a TF2 task (model()); a graph task "
                            "gives a function returning per-example values, or a tf.compat.v1.metrics-style "
                            "function returning (value, update_op)")
        found.streaming[name] = Streaming(name, spec, goal)
    elif callable(spec):
        found.reduced[name] = _PerExample(name, spec, goal)
    else:
        raise TaskError(f"metric {name!r}: {type(spec).__name__} is not a metric (a built-in name, a function "
                        "(labels, outputs) -> per-example values, or a streaming metric)")


def settle(values: dict[str, dict[str, float]]) -> tuple[dict[str, dict[str, float]], tuple[str, ...]]:
    """A pass's values without the undefined ones (warned about); CheckpointError when the loss is
    not finite (the weights, or the data, hold NaN or infinity)."""
    kept: dict[str, dict[str, float]] = {}
    warnings = []
    for set_name, found in values.items():
        loss = found.get("loss")
        if loss is not None and not math.isfinite(loss):
            where = "" if len(values) == 1 else f" on {set_name!r}"
            raise CheckpointError(f"the loss{where} is not finite ({loss}): the weights (or the validation data) "
                                  "hold NaN or infinity; diverged training?")
        kept[set_name] = {name: value for name, value in found.items() if math.isfinite(value)}
        undefined = [name for name, value in found.items() if not math.isfinite(value)]
        if undefined:
            warnings.append(f"{', '.join(undefined)} undefined on {set_name!r} (e.g. a class with no examples, "
                            "or a metric function returning NaN); not recorded")
    return kept, tuple(warnings)


def guess_goal(name: str) -> str:
    """A task metric's direction when the task does not give one: falling for losses and errors."""
    lowered = name.lower()
    return MIN if any(word in lowered for word in _FALLING) else MAX


# -- shared pieces ----------------------------------------------------------------------------------

def predicted_classes(outputs: tf.Tensor, problem: Problem) -> tf.Tensor:
    """The predicted class of each example (int64)."""
    if problem.classes == 1:
        threshold = 0.0 if problem.from_logits else 0.5
        return tf.cast(outputs[:, 0] > threshold, tf.int64)
    return tf.argmax(outputs, axis=1, output_type=tf.int64)


def losses(labels: tf.Tensor, outputs: tf.Tensor, problem: Problem) -> tf.Tensor:
    """The per-example loss: softmax or sigmoid cross-entropy, or the squared error (several
    targets: its mean over them)."""
    if problem.kind == REGRESSION:
        return _per_example(tf.square(regression_errors(labels, outputs)))
    if problem.classes == 1:
        target = tf.cast(labels, outputs.dtype)
        if problem.from_logits:
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=outputs[:, 0])
        p = tf.clip_by_value(outputs[:, 0], 1e-7, 1 - 1e-7)
        return -(target * tf.math.log(p) + (1 - target) * tf.math.log(1 - p))
    if problem.from_logits:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outputs)
    picked = tf.gather(outputs, labels, axis=1, batch_dims=1)
    return -tf.math.log(tf.clip_by_value(picked, 1e-7, 1.0))


def regression_outputs(outputs: tf.Tensor) -> tf.Tensor:
    """A regression model's outputs as [batch] ([batch, 1] is squeezed)."""
    return outputs[:, 0] if outputs.shape.rank == 2 else outputs


def regression_errors(labels: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
    """outputs - targets in float64: [batch] for one target per example, [batch, targets] for several."""
    if labels.shape.rank != 2:
        outputs = regression_outputs(outputs)
    return tf.cast(outputs, tf.float64) - tf.cast(labels, tf.float64)


def _per_example(values: tf.Tensor) -> tf.Tensor:
    """Per-target values [batch, targets] averaged per example: [batch] (one target: as they are)."""
    return tf.reduce_mean(values, axis=1) if values.shape.rank == 2 else values


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic, ties counted half; NaN with one class only."""
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based ranks, ties share their mean
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def _width(problem: Problem) -> int:
    if problem.classes is None:
        raise TaskError("precision, recall and f1 need the outputs' number of classes to be known (static shape)")
    return max(problem.classes, 2)


def _counts(classes: tf.Tensor, width: int) -> tf.Tensor:
    return tf.math.bincount(tf.cast(classes, tf.int32), minlength=width, maxlength=width, dtype=tf.int64)


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """top / bottom, 0 where bottom is 0 (scikit-learn's zero_division=0)."""
    return np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)


def _check_class(cls: int | None, problem: Problem, what: str) -> None:
    if problem.kind != CLASSIFICATION:
        raise TaskError(f"{what} needs a classification task")
    width = max(problem.classes or 2, 2)
    if cls is not None and problem.classes is not None and not 0 <= cls < width:
        raise TaskError(f"{what}:{cls}: the model has classes 0..{width - 1}")
