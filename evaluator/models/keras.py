"""TF2 tasks: the trainer's model (Keras 3, or a tf.Module) built once, checkpoints restored into it
by object matching, exponential moving averages found in the checkpoint's object graph, and one
forward pass traced once as a tf.function for the whole run.

Object matching is what `tf.train.Checkpoint.read` does: walk the checkpoint's object graph and the
model's trackable children together, by the names the children have (`layer_with_weights-0`,
`_functional`, `_kernel`...), never by variable names, which Keras makes up per process. Where a
variable's average is kept depends on who kept it:

- Keras 3 `optimizer(use_ema=True)`: `optimizer/_model_variables_moving_average/i` is the average
  of `optimizer/_trainable_variables/i`, which is the same object (node) as the model's variable;
- tf_keras `use_ema`: the optimizer's `_model_variables_moving_average`, full names
  `<Optimizer>/average/<variable's full name>`;
- an eager `tf.train.ExponentialMovingAverage` tracked in the checkpoint: full names
  `<variable's full name>/ExponentialMovingAverage` (or --ema-name).

Keras weight files (`*.weights.h5`, `*.keras`) are loaded with `model.load_weights`.
"""

from __future__ import annotations

import difflib
import inspect
import os
import time
import zipfile
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

from evaluator import checkpoints, data, metrics
from evaluator.checkpoints import EMA_NAME, Checkpoint, step_from_name
from evaluator.errors import (
    Abandoned,
    CheckpointError,
    CheckpointIncomplete,
    CheckpointMissing,
    EvaluationFault,
    TaskError,
    first_line,
)
from evaluator.evaluation import NO_EMA, Metrics
from evaluator.metrics import CLASSIFICATION, Problem, settle
from evaluator.metrics import suite as metric_suite
from evaluator.models import DEFAULT_BATCH_SIZE, Outcome, describe_metrics
from evaluator.models.device import Placement, select_device
from evaluator.restore import OBJECT_GRAPH_KEY, READ_ERRORS, read_error
from evaluator.validate import Progress

#: The attribute under which a trackable variable's value is saved.
VALUE = "VARIABLE_VALUE"
#: Variables the step is read from, in this order (then the optimizer's iterations, then the name).
STEP_NAMES = ("global_step", "step")
ITERATION_NAMES = ("iterations", "_iterations", "iter")
_NAMES_SHOWN = 8


@dataclass(frozen=True)
class _Plan:
    """How one layout of checkpoint (its object graph) restores into the model."""

    #: Checkpoint key to read for each model variable, in the order of `KerasModel.variables`.
    keys: list[str]
    ema_source: str
    step_key: str | None
    warnings: tuple[str, ...] = ()


@dataclass
class _Graph:
    """A checkpoint's object graph: nodes, their paths from the root, and variable attributes."""

    proto: TrackableObjectGraph
    paths: dict[int, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> _Graph:
        proto = TrackableObjectGraph()
        proto.ParseFromString(data)
        graph = cls(proto)
        queue = deque([(0, "")])
        while queue:
            node_id, path = queue.popleft()
            if node_id in graph.paths:
                continue
            graph.paths[node_id] = path
            for ref in proto.nodes[node_id].children:
                queue.append((ref.node_id, f"{path}/{ref.local_name}" if path else ref.local_name))
        return graph

    def value(self, node_id: int) -> tuple[str, str] | None:
        """(checkpoint key, full name) of a variable node, or None if the node holds no value."""
        for attribute in self.proto.nodes[node_id].attributes:
            if attribute.name == VALUE:
                return attribute.checkpoint_key, attribute.full_name
        return None

    def child(self, node_id: int, name: str) -> int | None:
        for ref in self.proto.nodes[node_id].children:
            if ref.local_name == name:
                return ref.node_id
        return None

    def items(self, node_id: int) -> list[int]:
        """The elements of a list node (children named 0, 1, ...), in order."""
        numbered = [(int(ref.local_name), ref.node_id) for ref in self.proto.nodes[node_id].children
                    if ref.local_name.isdigit()]
        return [node for _, node in sorted(numbered)]

    def find(self, name: str) -> list[int]:
        """Every node that has a child called `name`."""
        return [node_id for node_id, node in enumerate(self.proto.nodes)
                if any(ref.local_name == name for ref in node.children)]

    def variable_names(self) -> list[str]:
        """The full names the trainer's variables had (`sequential/dense/kernel`), for error messages."""
        return sorted({value[1] for n in self.paths if (value := self.value(n)) is not None})


class _Batches:
    """One validation set as batches ready for the forward pass (numpy data placed once on the device)."""

    def __init__(self, validation: data.ValidationSet, batch_size: int) -> None:
        self.name = validation.name
        self.dataset = validation.dataset
        self.size = validation.size
        self.signature = (validation.feature_spec, validation.label_spec)
        self.fixed: list[tuple[tf.Tensor, tf.Tensor]] = []
        if validation.arrays is not None:
            features, labels = validation.arrays
            self.fixed = [(tf.constant(features[i:i + batch_size]), tf.constant(labels[i:i + batch_size]))
                          for i in range(0, len(labels), batch_size)]

    def __iter__(self) -> Any:
        return iter(self.fixed) if self.dataset is None else iter(self.dataset)

    def first(self) -> tf.Tensor:
        for features, _ in self:
            return features
        raise TaskError(f"validation set {self.name!r} produced no batches")


class KerasModel:
    """A TF2 model, restored by object matching and evaluated by a forward pass traced once."""

    kind = "keras"
    reads_weight_files = True
    artifact = None

    def __init__(self, task: Any, model: Any, sets: data.ValidationSets, batches: list[_Batches],
                 suite: metrics.Suite, placement: Placement, *, ema: bool, ema_name: str) -> None:
        self.model = model
        self.sets = sets
        self.batches = batches
        self.suite = suite
        self.placement = placement
        self.ema = ema
        self.ema_name = ema_name
        self.root = str(getattr(task, "checkpoint_root", "model") or "model")
        self.variables: list[Any] = list(model.variables)
        if not self.variables:
            raise TaskError("model() has no variables: there is nothing to restore")
        self._plans: dict[bytes, _Plan] = {}
        #: How many times the forward pass was traced: once per input signature (tests count it).
        self.traces = 0
        self._training_kwarg = _accepts_training(model)
        self._steps: dict[Any, Any] = {}
        for batches in self.batches:
            if batches.signature not in self._steps:
                step = tf.function(self._batch_statistics, input_signature=list(batches.signature))
                _task_trace(step)
                self._steps[batches.signature] = step
        _check_streaming(suite)

    @classmethod
    def build(cls, task: Any, *, device: str = "auto", ema: bool = True, ema_name: str = EMA_NAME,
              batch_size: int = DEFAULT_BATCH_SIZE, metrics: tuple[str, ...] = ()) -> KerasModel:
        """Build the model once, on the device, and call it once so every variable exists."""
        placement = select_device(device)
        with tf.device(placement.tf_device):
            model = _task_call(task.model, "model()")
            sets = data.load(task)
            batches = [_Batches(validation, batch_size) for validation in sets.sets]
            try:
                outputs = _forward(model, batches[0].first(), _accepts_training(model))
            except TaskError:
                raise
            except Exception as err:
                raise TaskError(f"calling the model on the validation features failed: {type(err).__name__}: "
                                f"{first_line(err)}") from err
            sets = data.settle(sets, outputs.shape, outputs.dtype, "the model")  # the problem, with the width
            classes = outputs.shape[1] if sets.problem == CLASSIFICATION else None
            problem = Problem(sets.problem, classes, bool(getattr(task, "from_logits", True)))
            suite = metric_suite(task, problem, metrics, streaming_kind="keras")
            return cls(task, model, sets, batches, suite, placement, ema=ema, ema_name=ema_name)

    # -- the interface the service calls --------------------------------------------------------

    @property
    def device(self) -> str:
        return self.placement.name

    @property
    def examples(self) -> int | None:
        sizes = [batches.size for batches in self.batches]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": self.device, "variables": len(self.variables),
                "parameters": int(sum(np.prod(v.shape) for v in self.variables)), **describe_metrics(self)}

    def close(self) -> None:
        pass

    def export(self, fmt: str, target: str, prefix: str, restore: bool = False) -> None:
        """A SavedModel of the model as it is now: right after an evaluation, the weights (averages)
        that were evaluated; with `restore`, those of the checkpoint at `prefix`, restored first as
        an evaluation would (the next evaluation restores its own)."""
        from evaluator.models.export import keras_savedmodel

        if fmt != "savedmodel":
            raise TaskError(f"a TF2 task exports a SavedModel, not {fmt}")
        if restore:
            checkpoint = Checkpoint(os.path.basename(prefix), prefix, step_from_name(prefix))
            with tf.device(self.placement.tf_device):
                (self._load_file if checkpoint.is_weight_file else self._restore)(checkpoint)
        keras_savedmodel(self.model, self.batches[0].signature[0],
                         lambda features: _forward(self.model, features, self._training_kwarg), target)

    def evaluate(self, checkpoint: Checkpoint, progress: Progress | None = None) -> Outcome:
        """Restore `checkpoint` and run the validation set; raises CheckpointError and its kin."""
        start = time.perf_counter()
        with tf.device(self.placement.tf_device):
            if checkpoint.is_weight_file:
                step, source, warnings = self._load_file(checkpoint)
            else:
                step, source, warnings = self._restore(checkpoint)
            restored = time.perf_counter() - start
            found = self._validate(progress)
        return Outcome(step=step, ema_source=source, restore_seconds=restored, metrics=found,
                       warnings=warnings + found.warnings)

    # -- restoring --------------------------------------------------------------------------------

    def _restore(self, checkpoint: Checkpoint) -> tuple[int | None, str, tuple[str, ...]]:
        try:
            reader = tf.train.load_checkpoint(checkpoint.path)
            shapes = reader.get_variable_to_shape_map()
            dtypes = reader.get_variable_to_dtype_map()
            if OBJECT_GRAPH_KEY not in shapes:
                raise CheckpointError(
                    f"{checkpoint.name} is a name-based checkpoint (tf.compat.v1 Saver), without an object "
                    "graph: evaluate it with a graph task (inference(features) -> logits)")
            graph_bytes = reader.get_tensor(OBJECT_GRAPH_KEY)
            plan = self._plans.get(graph_bytes)
            if plan is None:
                plan = self._plan(_Graph.parse(graph_bytes))
                self._plans = {graph_bytes: plan}  # one layout per run, normally; never grows
            self._check_shapes(plan, shapes, dtypes)
            values = tf.raw_ops.RestoreV2(prefix=checkpoint.path, tensor_names=plan.keys,
                                          shape_and_slices=[""] * len(plan.keys),
                                          dtypes=[dtypes[key] for key in plan.keys])
            for variable, value in zip(self.variables, values):
                variable.assign(value)
            step = _scalar(reader, plan.step_key)
        except READ_ERRORS as err:
            raise read_error(checkpoint, err) from err
        return (step if step is not None else checkpoint.name_step), plan.ema_source, plan.warnings

    def _plan(self, graph: _Graph) -> _Plan:
        """Match the model to the checkpoint's objects; find each variable's average and the step."""
        start = graph.child(0, self.root)
        nodes = _match(self.model, graph, start if start is not None else 0)
        raw: list[tuple[str, str] | None] = [None] * len(self.variables)
        node_of: list[int | None] = [None] * len(self.variables)
        for index, variable in enumerate(self.variables):
            node_id = nodes.get(id(variable))
            if node_id is None and hasattr(variable, "value"):
                node_id = nodes.get(id(_safe(lambda v=variable: v.value)))
            node_of[index] = node_id
            raw[index] = graph.value(node_id) if node_id is not None else None
        lacking = [_path(v) for v, found in zip(self.variables, raw) if found is None]
        if lacking:
            raise CheckpointError(self._lacking_message(lacking, graph, start))
        keys = [key for key, _ in raw]  # type: ignore[misc]
        source, warnings = NO_EMA, ()
        if self.ema:
            trainable = {id(v) for v in getattr(self.model, "trainable_variables", self.variables)}
            averages, source, warnings = _averages(graph, [n for n in node_of],  # type: ignore[misc]
                                                   [name for _, name in raw],  # type: ignore[misc]
                                                   [id(v) in trainable for v in self.variables], self.ema_name)
            keys = [averages.get(i, key) for i, key in enumerate(keys)]
        return _Plan(keys=keys, ema_source=source, step_key=_step_key(graph), warnings=warnings)

    def _lacking_message(self, lacking: list[str], graph: _Graph, start: int | None) -> str:
        have = graph.variable_names()
        near = []
        for name in lacking[:_NAMES_SHOWN]:
            near += [m for m in difflib.get_close_matches(name, have, n=1, cutoff=0.3) if m not in near]
        where = "" if start is not None else (
            f" (the checkpoint's root has no `{self.root}`: its children are "
            f"{', '.join(ref.local_name for ref in graph.proto.nodes[0].children) or 'none'}; set the task's "
            "checkpoint_root)")
        return (f"checkpoint lacks {len(lacking)} of the model's {len(self.variables)} variables: "
                f"{_names(lacking)}{where}; nearest in the checkpoint: {_names(near or have)}")

    def _check_shapes(self, plan: _Plan, shapes: dict[str, list[int]], dtypes: dict[str, tf.DType]) -> None:
        problems = []
        for variable, key in zip(self.variables, plan.keys):
            want_shape, want_dtype = list(variable.shape), tf.as_dtype(variable.dtype)
            if list(shapes[key]) != want_shape:
                problems.append(f"{_path(variable)} is {want_shape} in the model, {list(shapes[key])} in the checkpoint")
            elif dtypes[key] != want_dtype:
                problems.append(f"{_path(variable)} is {want_dtype.name} in the model, {dtypes[key].name} in the checkpoint")
        if problems:
            raise CheckpointError(f"checkpoint does not fit the model: {'; '.join(problems[:_NAMES_SHOWN])}")

    def _load_file(self, checkpoint: Checkpoint) -> tuple[int | None, str, tuple[str, ...]]:
        """A Keras weight file (`.weights.h5`, `.keras`): the weights as saved, step from the name."""
        try:
            self.model.load_weights(checkpoint.path)
        except FileNotFoundError as err:
            raise CheckpointMissing(f"{checkpoint.name} was deleted before it could be read") from err
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:  # a file still being written reads like this
            if not checkpoints.exists(checkpoint.path):
                raise CheckpointMissing(f"{checkpoint.name} was deleted before it could be read") from err
            raise CheckpointIncomplete(f"cannot load {checkpoint.name}: {type(err).__name__}: {first_line(err)}") from err
        except ValueError as err:
            raise CheckpointError(f"cannot load {checkpoint.name}: {first_line(err)}") from err
        return checkpoint.name_step, NO_EMA, ()

    # -- validating -------------------------------------------------------------------------------

    def _batch_statistics(self, features: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        """One batch: the forward pass, every reduced metric's statistics, the streaming updates."""
        self.traces += 1  # runs when traced only
        outputs = _forward(self.model, features, self._training_kwarg)
        labels = self.suite.labels(labels)
        found = self.suite.statistics(labels, outputs)
        for streaming in self.suite.streaming.values():
            streaming.obj.update_state(labels, outputs)
        return found

    def _validate(self, progress: Progress | None) -> Metrics:
        start = time.perf_counter()
        values: dict[str, dict[str, float]] = {}
        counts: dict[str, int] = {}
        done = 0
        try:
            for batches in self.batches:
                step = self._steps[batches.signature]
                for streaming in self.suite.streaming.values():
                    streaming.obj.reset_state()
                totals = self.suite.totals()
                for features, labels in batches:
                    totals.add({key: value.numpy() for key, value in step(features, labels).items()})
                    if progress is not None:
                        progress(done + totals.examples)
                if totals.examples == 0:
                    raise self.sets.empty(batches.name)
                done += totals.examples
                values[batches.name] = {**totals.values(), **{name: _result(streaming) for name, streaming
                                                              in self.suite.streaming.items()}}
                counts[batches.name] = totals.examples
        except (Abandoned, TaskError, EvaluationFault):
            raise
        except Exception as err:
            raise EvaluationFault(f"validation failed: {type(err).__name__}: {first_line(err)}") from err
        values, warnings = settle(values)
        return Metrics(values=values, counts=counts, seconds=time.perf_counter() - start, goals=self.suite.goals,
                       warnings=warnings)


# -- object matching ------------------------------------------------------------------------------

def _match(model: Any, graph: _Graph, start: int) -> dict[int, int]:
    """id(Python object) -> checkpoint node, walking both graphs from (model, start) by child names."""
    found: dict[int, int] = {}
    seen = {start}
    queue = deque([(model, start)])
    while queue:
        obj, node_id = queue.popleft()
        found.setdefault(id(obj), node_id)
        try:
            children = tf.train.TrackableView.children(obj)
        except Exception:  # noqa: BLE001 - not a trackable: a leaf
            continue
        for ref in graph.proto.nodes[node_id].children:
            child = children.get(ref.local_name)
            if child is None or ref.node_id in seen:
                continue
            seen.add(ref.node_id)
            queue.append((child, ref.node_id))
            inner = _safe(lambda c=child: c.value) if not isinstance(child, tf.Variable) else None
            if isinstance(inner, tf.Variable):  # a Keras 3 variable wraps a tf.Variable
                found.setdefault(id(inner), ref.node_id)
    return found


def _averages(graph: _Graph, nodes: list[int], names: list[str], trainable: list[bool],
              ema_name: str) -> tuple[dict[int, str], str, tuple[str, ...]]:
    """Variable index -> checkpoint key of its average, the layout they came from, and warnings."""
    layouts: list[tuple[str, dict[int, str]]] = []
    # Keras 3 / tf_keras use_ema: pair the optimizer's list of averages with its list of variables.
    for owner in graph.find("_model_variables_moving_average"):
        average_list = graph.child(owner, "_model_variables_moving_average")
        averages = graph.items(average_list) if average_list is not None else []
        variables_list = graph.child(owner, "_trainable_variables")
        by_node: dict[int, str] = {}
        if variables_list is not None:
            for variable_node, average_node in zip(graph.items(variables_list), averages):
                value = graph.value(average_node)
                if value is not None:
                    by_node[variable_node] = value[0]
            layouts.append(("keras", {i: by_node[n] for i, n in enumerate(nodes) if n in by_node}))
        else:  # tf_keras: averages are named <Optimizer>/average/<variable's full name>
            by_name = {}
            for average_node in averages:
                value = graph.value(average_node)
                if value is not None and "/average/" in value[1]:
                    by_name[value[1].split("/average/", 1)[1]] = value[0]
            layouts.append(("tf-keras", {i: by_name[n] for i, n in enumerate(names) if n in by_name}))
    # tf.train.ExponentialMovingAverage: <full name>/ExponentialMovingAverage
    suffix = f"/{ema_name}"
    by_full_name = {}
    for node_id in graph.paths:
        value = graph.value(node_id)
        if value is not None and value[1].endswith(suffix):
            by_full_name[value[1][: -len(suffix)]] = value[0]
    if by_full_name:
        layouts.append(("tf-ema", {i: by_full_name[n] for i, n in enumerate(names) if n in by_full_name}))
    if not layouts:
        return {}, NO_EMA, ()
    source, chosen = max(layouts, key=lambda layout: len(layout[1]))
    wanted = [i for i, is_trainable in enumerate(trainable) if is_trainable]
    without = [i for i in wanted if i not in chosen]
    if not chosen:
        return {}, NO_EMA, (f"the checkpoint holds averages ({source} layout) that match none of the model's "
                            "variables; restored the raw weights",)
    warnings = ()
    if without:
        warnings = (f"{len(without)} of the model's {len(wanted)} trainable variables have no average in the "
                    f"checkpoint ({source} layout); restored their raw values",)
    return chosen, source, warnings


def _step_key(graph: _Graph) -> str | None:
    """Where the step is: a root `global_step` or `step` variable, else an optimizer's iterations."""
    for name in STEP_NAMES:
        node = graph.child(0, name)
        if node is not None and graph.value(node) is not None:
            return graph.value(node)[0]  # type: ignore[index]
    for name in ITERATION_NAMES:
        for owner in graph.find(name):
            value = graph.value(graph.child(owner, name))  # type: ignore[arg-type]
            if value is not None and "optimizer" in graph.paths.get(owner, "").lower():
                return value[0]
    return None


def _scalar(reader: Any, key: str | None) -> int | None:
    if key is None:
        return None
    value = np.asarray(reader.get_tensor(key))
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
        return None
    return int(value)


# -- helpers ----------------------------------------------------------------------------------------

def _forward(model: Any, features: tf.Tensor, training_kwarg: bool) -> tf.Tensor:
    outputs = model(features, training=False) if training_kwarg else model(features)
    if isinstance(outputs, (list, tuple)) or not hasattr(outputs, "shape"):
        raise TaskError(f"the model must return one tensor of outputs, not {type(outputs).__name__}")
    return outputs


def _accepts_training(model: Any) -> bool:
    try:
        parameters = inspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return False
    return "training" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _task_trace(step: Any) -> None:
    """Trace the batch function now, so a task metric that cannot work says so at start-up."""
    try:
        step.get_concrete_function()
    except TaskError:
        raise
    except Exception as err:
        raise TaskError(f"the model or a metric fails on the validation batches: {type(err).__name__}: "
                        f"{first_line(err)}") from err


def _check_streaming(suite: metrics.Suite) -> None:
    """Each streaming metric's result() must be one number (checked once, before any checkpoint)."""
    for streaming in suite.streaming.values():
        try:
            _result(streaming)
            streaming.obj.reset_state()
        except Exception as err:
            raise TaskError(f"metric {streaming.name!r}: result() must be one number: {type(err).__name__}: "
                            f"{first_line(err)}") from err


def _result(streaming: metrics.Streaming) -> float:
    value = np.asarray(streaming.obj.result())
    if value.size != 1:
        raise TaskError(f"metric {streaming.name!r}: result() has shape {list(value.shape)}, not one number")
    return float(value.reshape(()))


def _task_call(method: Any, what: str) -> Any:
    try:
        return method()
    except Exception as err:
        raise TaskError(f"{what} failed: {type(err).__name__}: {first_line(err)}") from err


def _path(variable: Any) -> str:
    """A variable's name as Keras shows it (`sequential/dense_1/kernel`)."""
    path = getattr(variable, "path", None)
    return str(path) if path else str(variable.name).removesuffix(":0")


def _safe(get: Any) -> Any:
    try:
        return get()
    except Exception:  # noqa: BLE001
        return None


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" (and {more} more)" if more > 0 else "")

