"""The task: how a user gives the evaluator the model and the validation set.

`--task` names an object as `package.module:NAME` or `path/to/file.py:NAME`. There are two kinds,
chosen by which method the object has; neither is a special case of the other.

A **TF2 task** (Keras 3 or tf.Module) provides:

- ``model()``: returns the trainer's model, built the same way (a Keras model, Sequential,
  functional or subclassed, or a ``tf.Module`` whose ``__call__(features)`` returns logits).
  Checkpoints are matched by object structure, not by variable names;
- ``validation_data()``: as below.
- optional ``checkpoint_root`` (str, default ``"model"``): the attribute name the trainer used in
  ``tf.train.Checkpoint(model=...)``; a checkpoint whose root is the model itself works too;
- optional ``from_logits`` (bool, default True): False when the model ends in a softmax.

A **graph task** (``tf.compat.v1`` code) provides:

- ``inference(features) -> logits``: builds the evaluation graph from a features tensor with
  ``tf.compat.v1`` variables, the same code the trainer used (variable names must match the
  checkpoint's);
- ``validation_data()``: either a ``(features, labels)`` pair of numpy arrays (labels as class
  indices, shape ``[N]``, or one-hot, shape ``[N, classes]``), or a ``tf.data.Dataset`` that
  yields *batches* of ``(features, labels)``. It is called once, inside the evaluation graph.

A graph task may also give ``verify_checkpoint(path)``, raising errors.CheckpointError for a
checkpoint that does not fit its graph (before the restore; `--meta-graph` compares the `.meta`),
and ``outputs_named`` (str): what messages call its outputs (the no-code tasks: "--output NAME").

Optionally ``batch_size`` (int) sets the batch size for numpy data (``--batch-size`` overrides it).
Either kind may also give:

- ``validation_data()`` returning a mapping from a name to a set: every set is evaluated on every
  checkpoint (the first is the default one, whose accuracy and loss fill a row's columns);
- ``metrics``: built-in names, or a mapping from a name to a built-in name, a function
  ``(labels, outputs) -> per-example values``, a streaming metric (``keras.metrics.Metric`` for
  TF2 tasks, ``(value, update_op)`` for graph tasks) or a ``(metric, "max"|"min")`` pair
  (evaluator/metrics.py);
- ``problem``: "classification" or "regression", when the labels' type does not say it.

If NAME is a class, it is instantiated with no arguments.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from evaluator.errors import TaskError

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps TensorFlow out of this module's import
    import numpy as np
    import tensorflow as tf

#: What each kind of task must provide.
REQUIRED = {"keras": ("model", "validation_data"), "graph": ("inference", "validation_data")}


@runtime_checkable
class KerasTask(Protocol):
    """A TF2 task. See the module docstring for the contract."""

    def model(self) -> Any:
        """The trainer's model (Keras 3 or tf.Module), built eagerly."""
        ...

    def validation_data(self) -> tuple[np.ndarray, np.ndarray] | tf.data.Dataset:
        """The validation set: numpy (features, labels), or a Dataset of batches."""
        ...


@runtime_checkable
class Task(Protocol):
    """A graph task. See the module docstring for the contract."""

    def inference(self, features: tf.Tensor) -> tf.Tensor:
        """Build the model on `features` and return logits of shape [batch, classes]."""
        ...

    def validation_data(self) -> tuple[np.ndarray, np.ndarray] | tf.data.Dataset:
        """The validation set: numpy (features, labels), or a Dataset of batches."""
        ...


def load_task(spec: str) -> Task:
    """Import the object `spec` names and check it is a Task; TaskError says what is wrong."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise TaskError(
            f"--task {spec!r} is not of the form package.module:NAME or path/to/file.py:NAME"
        )
    module = _import_file(target) if _is_path(target) else _import_module(target)
    try:
        obj = getattr(module, name)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_") and n.isupper())
        hint = f" (it has {', '.join(public[:8])})" if public else ""
        raise TaskError(f"--task {spec!r}: {target} has no attribute {name!r}{hint}") from None
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as err:
            raise TaskError(f"--task {spec!r}: {name}() failed: {type(err).__name__}: {err}") from err
    if not any(callable(getattr(obj, m, None)) for m in ("model", "inference")):
        raise TaskError(
            f"--task {spec!r}: {name} has neither model() (TF2: returns the Keras model or tf.Module) nor "
            "inference(features) -> logits (tf.compat.v1 graph code); a task provides one of them and validation_data()"
        )
    lacking = [member for member in REQUIRED[task_kind(obj)] if not callable(getattr(obj, member, None))]
    if lacking:
        raise TaskError(
            f"--task {spec!r}: {name} lacks {' and '.join(m + '()' for m in lacking)}; a task provides "
            "validation_data() and either model() (TF2, Keras) or inference(features) -> logits (tf.compat.v1)"
        )
    return obj


def task_kind(task: Any) -> str:
    """"keras" for a task with model() (TF2), else "graph" (inference(), tf.compat.v1)."""
    return "keras" if callable(getattr(task, "model", None)) else "graph"


def batch_size_of(task: Any) -> int | None:
    """The task's preferred batch size for numpy data, if it declares a positive int one."""
    size = getattr(task, "batch_size", None)
    return size if isinstance(size, int) and size > 0 else None


def _is_path(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or (os.altsep or os.sep) in target


def _import_module(target: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name and target.startswith(err.name):
            raise TaskError(f"--task: no module named {target!r} (is it installed, or on PYTHONPATH?)") from err
        raise _import_failed(target, err) from err
    except Exception as err:  # the user's module raised while importing: report it, don't crash
        raise _import_failed(target, err) from err


def _import_file(target: str) -> ModuleType:
    path = os.path.abspath(target)
    if not os.path.isfile(path):
        raise TaskError(f"--task: file {target} does not exist")
    module_name = "_evaluator_task_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"--task: cannot import {target} as a Python file")
    # Like running the file as a script: its own directory is importable (e.g. a sibling model.py).
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # SyntaxError, ImportError, or anything the file raises at import
        del sys.modules[module_name]
        raise _import_failed(target, err) from err
    return module


def _import_failed(target: str, err: BaseException) -> TaskError:
    if isinstance(err, SyntaxError):
        where = f"{os.path.basename(err.filename or target)}, line {err.lineno}"
        return TaskError(f"--task: syntax error in {target} ({where}): {err.msg}")
    return TaskError(f"--task: importing {target} failed: {type(err).__name__}: {err}")
