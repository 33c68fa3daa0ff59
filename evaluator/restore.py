"""Restore a checkpoint into the evaluation graph, with EMA shadow values where the checkpoint has them.

The map comes from `tf.compat.v1.train.ExponentialMovingAverage(...).variables_to_restore()`:
each trainable variable is restored from `<its name>/ExponentialMovingAverage`. Before restoring,
the checkpoint's keys are checked: a variable without a shadow restores its own value, and a
variable the graph needs that the checkpoint lacks fails the checkpoint, naming the keys.
Name-based (Saver) and object-based (tf.train.Checkpoint / CheckpointManager) checkpoints are
both read: the latter through the object graph's `full_name -> checkpoint key` table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

from evaluator import callables, checkpoints
from evaluator.errors import (
    CheckpointError,
    CheckpointIncomplete,
    CheckpointMissing,
    EvaluationFault,
    TaskError,
    first_line,
)

#: Where an object-based checkpoint stores its object graph.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
#: The variable the step is read from; the `-N` suffix of the name is the fallback.
GLOBAL_STEP = "global_step"
_NAMES_SHOWN = 8
#: Errors of a read that came up short or garbled: a checkpoint still being copied looks like this.
_SHORT_READ = (tf.errors.OutOfRangeError, tf.errors.DataLossError, DecodeError)
#: Errors that say the machine is in the way, not the checkpoint (too many open files, no memory,
#: permissions, I/O): the checkpoint stays pending and is retried.
_ENVIRONMENT = (tf.errors.ResourceExhaustedError, tf.errors.UnavailableError, tf.errors.PermissionDeniedError,
                tf.errors.InternalError, tf.errors.UnknownError, tf.errors.AbortedError, OSError, MemoryError)
#: What reading a checkpoint can raise; `read_error` says what each means.
READ_ERRORS = (*_SHORT_READ, *_ENVIRONMENT, tf.errors.OpError, ValueError)


@dataclass(frozen=True)
class RestoreInfo:
    """What restoring one checkpoint did."""

    step: int | None
    #: Whether at least one variable got its EMA shadow value.
    ema: bool
    seconds: float


@dataclass(frozen=True)
class _RestoreOps:
    """What one session.run of a restore fetches and feeds."""

    restore: str
    filename: tf.Tensor
    step: tf.Tensor
    #: Whether `step` reads the checkpoint's global step (else it is a placeholder value).
    has_step: bool
    #: Whether the read fails for a tensor of another shape than its variable's (see `_direct_ops`).
    checks_shapes: bool = False


@dataclass(frozen=True)
class _Plan:
    """Checkpoint key -> graph variable for one checkpoint, and whether any key is a shadow."""

    var_list: dict[str, tf.Variable]
    ema: bool
    #: Whether every variable got the key it wanted most (its shadow, with EMA): a checkpoint that
    #: holds all these keys would be planned the same.
    complete: bool = True

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((key, var.op.name) for key, var in self.var_list.items()))


class _Catalog:
    """What a checkpoint holds: keys with shapes and dtypes, and for object-based ones name -> key."""

    def __init__(self, reader: tf.train.CheckpointReader) -> None:
        self.shapes: dict[str, list[int]] = reader.get_variable_to_shape_map()
        self.dtypes: dict[str, tf.DType] = reader.get_variable_to_dtype_map()
        self.names: dict[str, str] = {}
        if OBJECT_GRAPH_KEY in self.shapes:
            graph = TrackableObjectGraph()
            graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
            self.names = {a.full_name: a.checkpoint_key for node in graph.nodes for a in node.attributes}

    def key(self, name: str) -> str | None:
        """The checkpoint key holding variable `name`, or None."""
        key = self.names.get(name, name)
        return key if key in self.shapes else None

    def visible_names(self) -> list[str]:
        inverse = {key: name for name, key in self.names.items()}
        return sorted(inverse.get(key, key) for key in self.shapes if key != OBJECT_GRAPH_KEY)


class Restorer:
    """Restores checkpoints into one graph's variables; one Saver per distinct key map, built once."""

    def __init__(self, graph: tf.Graph, *, ema: bool, ema_name: str = checkpoints.EMA_NAME) -> None:
        self._graph = graph
        with graph.as_default():
            variables = tf.compat.v1.global_variables()
            if not variables:
                raise TaskError("inference() created no variables: there is nothing to restore")
            if ema:
                self._wanted: dict[str, tf.Variable] = ema_map(ema_name)
            else:
                self._wanted = {v.op.name: v for v in variables}
        self._ops: dict[tuple[Any, ...], _RestoreOps] = {}
        #: The ops of the last checkpoint's plan when the next may be restored without its catalog.
        self._unplanned: tuple[_Plan, _RestoreOps] | None = None
        self._callables: dict[tuple[tf.compat.v1.Session, str], Any] = {}

    def unrestored(self) -> list[tf.Variable]:
        """The graph's variables no checkpoint key is restored into: the averages of a graph imported
        from a `.meta` (their values went into the variables they average). An export initializes them."""
        wanted = {var.ref() for var in self._wanted.values()}
        with self._graph.as_default():
            return [var for var in tf.compat.v1.global_variables() if var.ref() not in wanted]

    def restore(self, session: tf.compat.v1.Session, checkpoint: checkpoints.Checkpoint) -> RestoreInfo:
        """Restore `checkpoint` into `session`; CheckpointMissing if it is gone, CheckpointError if unusable.

        One session.run restores the variables and reads the step, fed the path (Saver.restore would
        first list the files and log: a tenth of a millisecond per checkpoint, which a backlog of
        small checkpoints feels). The key map is planned from the checkpoint's catalog (its keys,
        shapes and types). For a small model whose last plan was complete (every variable from the
        key it wanted most), the next checkpoint is first restored with that plan without reading
        its catalog: one RestoreV2 names every key with its full shape, so it reads all of them or
        fails (a key missing, another shape or type), and a failure is planned from the catalog."""
        start = time.perf_counter()
        if self._unplanned is not None:
            plan, ops = self._unplanned
            try:
                _, step = self._run(session, ops, checkpoint.path)
                if np.ndim(step) == 0:
                    return self._info(checkpoint, plan, ops, step, start)
            except tf.errors.OpError:
                pass
            self._unplanned = None  # another key map, or a read that fails: planned from the catalog
        try:
            catalog = _Catalog(tf.train.load_checkpoint(checkpoint.path))
            plan = self._plan(catalog)
            ops = self._restore_ops(plan, catalog)
            _, step = self._run(session, ops, checkpoint.path)
        except READ_ERRORS as err:
            raise read_error(checkpoint, err) from err
        if plan.complete and ops.checks_shapes:
            self._unplanned = (plan, ops)
        return self._info(checkpoint, plan, ops, step, start)

    def _run(self, session: tf.compat.v1.Session, ops: _RestoreOps, path: str) -> Any:
        """The restore op and the step's read in one run, through a callable made once per session
        and ops (callables.py); returns (None, step)."""
        key = (session, ops.restore)
        run = self._callables.get(key)
        if run is None:
            run = self._callables[key] = callables.make(session, [ops.step], [ops.restore], [ops.filename])
        return None, run(path)[0]

    @staticmethod
    def _info(checkpoint: checkpoints.Checkpoint, plan: _Plan, ops: _RestoreOps, step: Any, start: float) -> RestoreInfo:
        return RestoreInfo(step=int(step) if ops.has_step else checkpoint.name_step, ema=plan.ema,
                           seconds=time.perf_counter() - start)

    def _plan(self, catalog: _Catalog) -> _Plan:
        var_list: dict[str, tf.Variable] = {}
        missing: list[str] = []
        mismatched: list[str] = []
        used_shadow = False
        complete = True
        for wanted, var in self._wanted.items():
            own = var.op.name
            key = catalog.key(wanted)
            shadow = key is not None and wanted != own
            if key is None and wanted != own:
                key = catalog.key(own)  # no shadow: restore its own value
                complete = False
            if key is None:
                missing.append(own)
                continue
            problem = _mismatch(key, catalog, var)
            if problem:
                mismatched.append(problem)
                continue
            var_list[key] = var
            used_shadow = used_shadow or shadow
        if missing:
            raise CheckpointError(
                f"checkpoint lacks {len(missing)} variable(s) the graph needs: {_names(sorted(missing))}"
                f"; it has: {_names(catalog.visible_names())}"
            )
        if mismatched:
            raise CheckpointError(f"checkpoint does not fit the graph: {'; '.join(mismatched[:_NAMES_SHOWN])}")
        return _Plan(var_list=var_list, ema=used_shadow, complete=complete)

    def _restore_ops(self, plan: _Plan, catalog: _Catalog) -> _RestoreOps:
        """The restore op for this key map and the step's read (built on first use, then reused)."""
        step_key = catalog.key(GLOBAL_STEP)
        if step_key is not None and (catalog.shapes[step_key] != [] or not catalog.dtypes[step_key].is_integer):
            step_key = None  # not a scalar integer: the name's step stands
        step_dtype = catalog.dtypes[step_key] if step_key else None
        cache_key = (plan.key, step_key, step_dtype)
        ops = self._ops.get(cache_key)
        if ops is None:
            with self._graph.as_default():
                if _direct(plan):
                    ops = _direct_ops(plan, step_key, step_dtype)
                else:
                    ops = _saver_ops(self._graph, plan, step_key, step_dtype)
            self._ops[cache_key] = ops
        return ops


#: The most elements a model may have for its checkpoints to be read by `_direct_ops`, whose shape
#: checks copy each tensor once more (a backlog of small checkpoints is where reading the catalog
#: weighs; for a large one the restore itself dwarfs it).
DIRECT_ELEMENTS = 1 << 24


def _direct(plan: _Plan) -> bool:
    """Whether the plan's variables are plain, fully shaped and small enough for `_direct_ops`."""
    variables = list(plan.var_list.values())
    if not all(isinstance(v, tf.Variable) and v.shape.is_fully_defined() for v in variables):
        return False
    return sum(v.shape.num_elements() for v in variables) <= DIRECT_ELEMENTS


def _direct_ops(plan: _Plan, step_key: str | None, step_dtype: tf.DType | None) -> _RestoreOps:
    """One RestoreV2 of every key (the step's too), each variable's with its full shape as a slice
    spec so that a tensor of another shape fails the read, then the assignments."""
    keys = list(plan.var_list)
    variables = [plan.var_list[key] for key in keys]
    specs = [_full_slice(v.shape) for v in variables]
    dtypes = [v.dtype.base_dtype for v in variables]
    if step_key is not None:
        keys, specs, dtypes = [*keys, step_key], [*specs, ""], [*dtypes, step_dtype]
    with tf.name_scope("evaluator_restore"):
        filename = tf.compat.v1.placeholder(tf.string, [], name="prefix")
        with tf.device("/cpu:0"):
            tensors = tf.raw_ops.RestoreV2(prefix=filename, tensor_names=keys, shape_and_slices=specs, dtypes=dtypes)
        restore = tf.group(*(v.assign(t, read_value=False) for v, t in zip(variables, tensors)))
        step = tf.cast(tensors[-1], tf.int64) if step_key is not None else tf.constant(-1, tf.int64)
    # Scalars have no slice spec: their shape is checked only when planned from the catalog.
    return _RestoreOps(restore=restore.name, filename=filename, step=step, has_step=step_key is not None,
                       checks_shapes=all(v.shape.rank for v in variables))


def _saver_ops(graph: tf.Graph, plan: _Plan, step_key: str | None, step_dtype: tf.DType | None) -> _RestoreOps:
    """A Saver's restore op for the key map (partitioned variables and large models), the step read beside it."""
    saver = tf.compat.v1.train.Saver(var_list=plan.var_list, sharded=False, allow_empty=False)
    filename = graph.get_tensor_by_name(saver.saver_def.filename_tensor_name)
    step: Any = tf.constant(-1, tf.int64)
    if step_key is not None:
        read = tf.raw_ops.RestoreV2(prefix=filename, tensor_names=[step_key], shape_and_slices=[""],
                                    dtypes=[step_dtype])[0]
        step = tf.cast(read, tf.int64)
    return _RestoreOps(restore=saver.saver_def.restore_op_name, filename=filename, step=step,
                       has_step=step_key is not None)


def _full_slice(shape: tf.TensorShape) -> str:
    """RestoreV2's spec for the whole of a tensor of `shape` ("64 10 -:-"): the read checks the shape."""
    dims = shape.as_list()
    return f"{' '.join(map(str, dims))} {':'.join('-' for _ in dims)}" if dims else ""


def ema_map(ema_name: str) -> dict[str, tf.Variable]:
    """Checkpoint key -> variable of the default graph, each averaged variable (trainable, or in
    MOVING_AVERAGE_VARIABLES) from `<var>/<ema_name>`: `ExponentialMovingAverage.variables_to_restore()`.

    Built after the model, in a graph of the task's code, its names are right as they come. A graph
    imported from the trainer's `.meta` holds the averages themselves: `variables_to_restore()` then
    names each one `<var>/<ema_name>_1` (the graph's unique_name) and maps the shadows to themselves.
    The names are set back to the trainer's, and the shadows dropped (nothing reads them)."""
    average = tf.compat.v1.train.ExponentialMovingAverage(decay=0.0, name=ema_name)
    wanted = average.variables_to_restore()
    averaged = {v.ref() for v in (*tf.compat.v1.trainable_variables(), *tf.compat.v1.moving_average_variables())}
    fixed = {f"{var.op.name}/{ema_name}": var for var in wanted.values() if var.ref() in averaged}
    for key, var in wanted.items():
        if var.ref() not in averaged and key not in fixed:
            fixed[key] = var
    return fixed


def read_error(checkpoint: checkpoints.Checkpoint, err: BaseException) -> Exception:
    """What an error reading `checkpoint` means: deleted meanwhile (missing), a short read (maybe
    still being written), the machine in the way (a fault to retry), or the checkpoint's own fault."""
    if not checkpoints.exists(checkpoint.path):  # deleted while we were reading it
        return _missing(checkpoint)
    message = f"cannot restore {checkpoint.name}: {type(err).__name__}: {first_line(err)}"
    if isinstance(err, _SHORT_READ) or "too short" in message:  # an index still being written reads short
        return CheckpointIncomplete(message)
    if isinstance(err, _ENVIRONMENT):
        return EvaluationFault(message)
    return CheckpointError(message)


def _missing(checkpoint: checkpoints.Checkpoint) -> CheckpointMissing:
    return CheckpointMissing(
        f"{checkpoint.name} was deleted before it could be read (training's max_to_keep?)"
    )


def _mismatch(key: str, catalog: _Catalog, var: tf.Variable) -> str | None:
    want_shape = var.shape.as_list()
    have_shape = list(catalog.shapes[key])
    if have_shape != want_shape:
        return f"{key} has shape {have_shape}, the graph's {var.op.name} {want_shape}"
    have_dtype = catalog.dtypes[key]
    if have_dtype != var.dtype.base_dtype:
        return f"{key} is {have_dtype.name}, the graph's {var.op.name} {var.dtype.base_dtype.name}"
    return None


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" (and {more} more)" if more > 0 else "")
