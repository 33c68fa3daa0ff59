"""Graph tasks' validation: one pass over every validation set in the evaluation graph.

Every set goes through one pair of input tensors (numpy batches fed into them, Datasets through
one reinitializable iterator), so the task's inference and the metric tensors are built once
whatever the number of sets. A checkpoint's pass goes through the sets in turn; the metrics'
per-batch statistics are added up on the host (metrics.Totals), and tf.compat.v1.metrics-style
streaming metrics are reset per set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

from evaluator import callables, data, metrics
from evaluator.errors import Abandoned, EvaluationFault, TaskError, first_line
from evaluator.evaluation import Metrics

#: Called after each batch with the number of examples done so far; may raise Abandoned.
Progress = Callable[[int], None]
DEFAULT_BATCH_SIZE = 1024
_CPU = "/device:CPU:0"


class _Inputs:
    """The `features` and `labels` tensors every set goes through, and how each set fills them.

    Numpy sets are fed batch by batch (any tensor can be fed, so also an iterator's outputs);
    Dataset sets run through one reinitializable iterator, re-initialized for each pass.
    """

    def __init__(self, sets: data.ValidationSets, batch_size: int) -> None:
        self._batch_size = batch_size
        feature_spec, label_spec = _structure(sets)
        datasets = [s.dataset for s in sets.sets if s.dataset is not None]
        self._initializers: dict[str, Any] = {}
        with tf.device(_CPU):
            if datasets:
                iterator = tf.compat.v1.data.Iterator.from_structure(
                    (feature_spec.dtype, label_spec.dtype), (feature_spec.shape, label_spec.shape))
                self._initializers = {s.name: iterator.make_initializer(s.dataset)
                                      for s in sets.sets if s.dataset is not None}
                self.features, self.labels = iterator.get_next()
            else:
                self.features = tf.compat.v1.placeholder(feature_spec.dtype, feature_spec.shape, name="features")
                self.labels = tf.compat.v1.placeholder(label_spec.dtype, label_spec.shape, name="labels")

    def feed_list(self, validation: data.ValidationSet) -> list[tf.Tensor]:
        """The tensors each batch of `validation` feeds: features and labels for numpy, none for a Dataset."""
        return [] if validation.arrays is None else [self.features, self.labels]

    def feeds(self, session: tf.compat.v1.Session, validation: data.ValidationSet) -> Iterator[tuple[Any, ...]]:
        """The values fed for each batch of `validation`, in `feed_list`'s order (a Dataset's end is
        OutOfRangeError from the run)."""
        if validation.arrays is None:
            session.run(self._initializers[validation.name])
            while True:
                yield ()
        features, labels = validation.arrays
        for start in range(0, len(labels), self._batch_size):
            end = start + self._batch_size
            yield features[start:end], labels[start:end]


class Validator:
    """The task's inference and the metrics on it; build inside the evaluation graph (and device scope)."""

    def __init__(self, task: Any, *, batch_size: int = DEFAULT_BATCH_SIZE, extra_metrics: tuple[str, ...] = ()) -> None:
        self.sets = data.load(task)
        self._inputs = _Inputs(self.sets, batch_size)
        try:
            logits = task.inference(self._inputs.features)
        except TaskError:  # says what is wrong already (the no-code tasks' own checks)
            raise
        except Exception as err:
            raise TaskError(f"inference() failed to build the graph: {type(err).__name__}: {err}") from err
        if not isinstance(logits, tf.Tensor):
            raise TaskError(f"inference() must return a tensor of outputs, not {type(logits).__name__}")
        who = getattr(task, "outputs_named", None) or "inference()"  # what messages call the outputs
        self.sets = data.settle(self.sets, logits.shape, logits.dtype, who)  # the problem, with the width
        problem = metrics.Problem(self.sets.problem, _classes(logits, self.sets.problem),
                                  bool(getattr(task, "from_logits", True)))
        self.suite = metrics.suite(task, problem, extra_metrics, streaming_kind="graph")
        graph = tf.compat.v1.get_default_graph()
        before = set(graph.get_collection(tf.compat.v1.GraphKeys.LOCAL_VARIABLES))
        self._statistics = self.suite.statistics(self._inputs.labels, logits)
        created = [v for v in graph.get_collection(tf.compat.v1.GraphKeys.LOCAL_VARIABLES) if v not in before]
        self._reset = tf.compat.v1.variables_initializer(created) if created else None
        self._updates = {name: s.obj[1] for name, s in self.suite.streaming.items()}
        self._values = {name: s.obj[0] for name, s in self.suite.streaming.items()}
        #: (session, feeds) -> the callable that runs one batch (`_step`).
        self._steps: dict[tuple[tf.compat.v1.Session, int], callables.Run] = {}

    def _step(self, session: tf.compat.v1.Session, validation: data.ValidationSet) -> callables.Run:
        """One batch's run, made once per session and kind of set (callables.py): the statistics'
        values, in order; the streaming metrics' updates run beside them."""
        feeds = self._inputs.feed_list(validation)
        key = (session, len(feeds))
        step = self._steps.get(key)
        if step is None:
            updates = list(self._updates.values())
            step = self._steps[key] = callables.make(
                session, [*self._statistics.values(), *(u for u in updates if isinstance(u, tf.Tensor))],
                [u for u in updates if not isinstance(u, tf.Tensor)], feeds)
        return step

    @property
    def examples(self) -> int | None:
        """Examples per pass, when known before one (numpy data)."""
        sizes = [s.size for s in self.sets.sets]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]

    def run(self, session: tf.compat.v1.Session, progress: Progress | None = None) -> Metrics:
        """One pass over every set with the variables as they are in `session`.

        The checkpoint was restored already, so what fails here is the task's or the machine's
        doing (EvaluationFault), except results that are not finite (CheckpointError: the weights).
        """
        start = time.perf_counter()
        try:
            values, counts = self._run(session, progress)
        except (Abandoned, EvaluationFault):
            raise
        except Exception as err:
            raise EvaluationFault(f"validation failed: {type(err).__name__}: {first_line(err)}") from err
        values, warnings = metrics.settle(values)
        return Metrics(values=values, counts=counts, seconds=time.perf_counter() - start,
                       goals=self.suite.goals, warnings=warnings)

    def _run(self, session: tf.compat.v1.Session,
             progress: Progress | None) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
        values: dict[str, dict[str, float]] = {}
        counts: dict[str, int] = {}
        done = 0
        names = list(self._statistics)
        for validation in self.sets.sets:
            if self._reset is not None:
                session.run(self._reset)
            totals = self.suite.totals()
            step = self._step(session, validation)
            for feed in self._inputs.feeds(session, validation):
                try:
                    batch = step(*feed)
                except tf.errors.OutOfRangeError:
                    break
                totals.add(dict(zip(names, batch)))
                if progress is not None:
                    progress(done + totals.examples)
            if totals.examples == 0:
                raise self.sets.empty(validation.name)
            done += totals.examples
            streamed = session.run(self._values) if self._values else {}  # a session.run costs ~0.1 ms
            values[validation.name] = {**totals.values(), **{n: float(v) for n, v in streamed.items()}}
            counts[validation.name] = totals.examples
        return values, counts


def _structure(sets: data.ValidationSets) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    """The features and labels specs every set fits (one dtype; the shapes they share)."""
    feature_types = {s.feature_spec.dtype for s in sets.sets}
    if len(feature_types) > 1:
        raise TaskError(f"validation sets {sets.names} have features of different types "
                        f"({', '.join(sorted(t.name for t in feature_types))}): give one type")
    shape = sets.sets[0].feature_spec.shape
    for validation in sets.sets[1:]:
        shape = shape.most_specific_compatible_shape(validation.feature_spec.shape)
    labels = sets.sets[0].label_spec  # [batch], or [batch, targets] for several targets per example
    return tf.TensorSpec(shape, feature_types.pop()), tf.TensorSpec([None, *labels.shape[1:]] if labels.shape.rank
                                                                    else [None], labels.dtype)


def _classes(outputs: tf.Tensor, problem: str) -> int | None:
    if problem == metrics.REGRESSION or outputs.shape.rank != 2:
        return None
    return outputs.shape[1]
