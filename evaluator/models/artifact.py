"""`--savedmodel` and `--frozen-graph`: exported models, each evaluated as it is (no EMA to map:
an export holds the weights it was given).

Each version (or `.pb` file) gets a graph of its own: the export imported with its input mapped
onto the validation features (`SavedModelLoader.load_graph(..., input_map=...)` and the
signature's tensors; `tf.import_graph_def` for a frozen GraphDef), the variables restored from
the version's `variables/`, and the same Validator (validate.py) as graph tasks: the same
metrics, data and problem. The first export is opened at start, so that a signature, an output or
a tensor name that does not exist, or data that does not fit, is a one-line error before anything
is evaluated; a later export that does not fit fails its own row.
"""

from __future__ import annotations

import difflib
import os
import time
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import graph_pb2

from evaluator.checkpoints import Checkpoint
from evaluator.data import ValidationSets
from evaluator.datafiles import Arrays, DataReader
from evaluator.errors import CheckpointError, CheckpointIncomplete, CheckpointMissing, TaskError, first_line
from evaluator.evaluation import NO_EMA
from evaluator.metrics import Suite
from evaluator.models import Outcome, describe_metrics
from evaluator.models.device import Placement, select_device
from evaluator.models.imported import check_data, check_path, check_tensor, input_signature
from evaluator.nocode import SAVEDMODEL, NoCode
from evaluator.validate import DEFAULT_BATCH_SIZE, Progress, Validator

#: The tag TF Serving loads.
SERVE = "serve"
#: Where an export's graph goes in the evaluation graph (apart from the Validator's own names).
SCOPE = "export"
#: The variables read as the step when a SavedModel carries one.
_STEP_KEYS = ("global_step", "global_step/.ATTRIBUTES/VARIABLE_VALUE", "step/.ATTRIBUTES/VARIABLE_VALUE")


class ArtifactTask:
    """What the options ask of every export: the data, the signature or tensors, and the first export."""

    def __init__(self, request: NoCode, reader: DataReader, first: str) -> None:
        self.request = request
        self.reader = reader
        self.first = first


class _Export:
    """One export as a graph task: `inference(features)` imports it; `restore(session)` afterwards."""

    def __init__(self, task: ArtifactTask, path: str) -> None:
        self.task = task
        self.path = path
        self.name = os.path.basename(path)
        request = task.request
        if request.mode == SAVEDMODEL:
            self._loader, self._tags = _serving(path, self.name)
            meta = self._loader.get_meta_graph_def_from_tags(self._tags)
            self.input_name, self.output_name, shape, dtype = _signature(meta, request, self.name)
        else:
            self._graph_def = _read_graph_def(path)
            assert request.input_name and request.output_name
            node = check_tensor(self._graph_def, request.input_name, "--input", self.name)
            check_tensor(self._graph_def, request.output_name, "--output", self.name)
            check_path(self._graph_def, request.input_name, request.output_name, self.name)
            self.input_name, self.output_name = request.input_name, request.output_name
            shape, dtype = input_signature(node)
        self._cast = check_data(task.reader, shape, dtype, self.input_name)
        self._saver: Any = None
        self.outputs_named = (f"--output {request.output_name}" if request.mode != SAVEDMODEL else
                              f"signature {request.signature}'s output")

    def validation_data(self) -> Arrays | dict[str, Arrays]:
        return self.task.reader.validation_data(self._cast)

    def inference(self, features: tf.Tensor) -> tf.Tensor:
        graph = tf.compat.v1.get_default_graph()
        if self.task.request.mode == SAVEDMODEL:
            self._saver, _ = self._loader.load_graph(graph, self._tags, import_scope=SCOPE, clear_devices=True,
                                                     input_map={self.input_name: features})
        else:
            tf.compat.v1.import_graph_def(self._graph_def, input_map={self.input_name: features}, name=SCOPE)
        return graph.get_tensor_by_name(f"{SCOPE}/{self.output_name}")

    def restore(self, session: tf.compat.v1.Session) -> int | None:
        """Restore the variables (a SavedModel's) and run its init ops; the step it carries, if any."""
        if self.task.request.mode != SAVEDMODEL:
            return None
        self._loader.restore_variables(session, self._saver, import_scope=SCOPE)
        self._loader.run_init_ops(session, self._tags, import_scope=SCOPE)
        return _carried_step(self.path)


@dataclass
class _Opened:
    """One export's evaluation graph, session and validator."""

    export: _Export
    graph: tf.Graph
    session: tf.compat.v1.Session
    validator: Validator

    def close(self) -> None:
        self.session.close()


class ArtifactModel:
    """Evaluates exported models, each in a graph of its own (see the module docstring)."""

    reads_weight_files = False

    def __init__(self, task: ArtifactTask, placement: Placement, batch_size: int, metrics: tuple[str, ...]) -> None:
        self.task = task
        self.kind = task.request.mode
        self.artifact = task.request.mode
        self.placement = placement
        self.batch_size = batch_size
        self.metrics = metrics
        self._template: Validator | None = None

    @classmethod
    def build(cls, task: ArtifactTask, *, device: str = "auto", ema: bool = True, ema_name: str = "",
              batch_size: int = DEFAULT_BATCH_SIZE, metrics: tuple[str, ...] = ()) -> ArtifactModel:
        """Open the first export (TaskError for what cannot work with any), keep its sets and metrics."""
        model = cls(task, select_device(device), batch_size, metrics)
        opened = model._open(task.first)
        model._template = opened.validator
        opened.close()
        return model

    def _open(self, path: str) -> _Opened:
        export = _Export(self.task, path)
        graph = tf.Graph()
        with graph.as_default():
            with tf.device(self.placement.tf_device):
                validator = Validator(export, batch_size=self.batch_size, extra_metrics=self.metrics)
        session = tf.compat.v1.Session(graph=graph, config=self.placement.config)
        return _Opened(export, graph, session, validator)

    def evaluate(self, checkpoint: Checkpoint, progress: Progress | None = None) -> Outcome:
        """Open, restore and validate one export; CheckpointError when it does not fit, or cannot be read."""
        start = time.perf_counter()
        try:
            opened = self._open(checkpoint.path)
        except (TaskError, CheckpointError, ValueError, KeyError, RuntimeError, OSError, tf.errors.OpError) as err:
            raise _unusable(checkpoint, err) from err
        try:
            try:
                step = opened.export.restore(opened.session)
            except (ValueError, OSError, tf.errors.OpError) as err:
                raise _unusable(checkpoint, err) from err
            restore_seconds = time.perf_counter() - start
            metrics = opened.validator.run(opened.session, progress)
        finally:
            opened.close()
        return Outcome(step=step if step is not None else checkpoint.name_step, ema_source=NO_EMA,
                       restore_seconds=restore_seconds, metrics=metrics, warnings=metrics.warnings)

    @property
    def device(self) -> str:
        return self.placement.name

    @property
    def examples(self) -> int | None:
        assert self._template is not None
        return self._template.examples

    @property
    def suite(self) -> Suite:
        assert self._template is not None
        return self._template.suite

    @property
    def sets(self) -> ValidationSets:
        assert self._template is not None
        return self._template.sets

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": self.device, "first": self.task.first, **describe_metrics(self)}

    def export(self, fmt: str, target: str, prefix: str, restore: bool = False) -> None:
        raise TaskError(f"--export does not apply to --{self.kind}: the exports are kept where they are")

    def close(self) -> None:
        pass


def _serving(path: str, where: str) -> tuple[Any, list[str]]:
    """The SavedModel's loader and the tags of its serving MetaGraph (`serve`, alone if it can);
    TaskError when it cannot be read or serves nothing."""
    from tensorflow.python.saved_model import loader_impl

    try:
        loader = loader_impl.SavedModelLoader(path)
        tag_sets = [list(meta.meta_info_def.tags) for meta in loader.saved_model.meta_graphs]
    except Exception as err:  # a garbled or truncated saved_model.pb (DecodeError, IOError...)
        raise TaskError(f"{where}: cannot read the SavedModel: {type(err).__name__}: {first_line(err)}") from err
    serving = sorted((tags for tags in tag_sets if SERVE in tags), key=len)
    if not serving:
        have = "; ".join(",".join(tags) for tags in tag_sets) or "none"
        raise TaskError(f"{where} has no MetaGraph tagged {SERVE!r} (its tags: {have})")
    return loader, serving[0]


def _signature(meta: Any, request: NoCode, where: str) -> tuple[str, str, list[int] | None, Any]:
    """The input and output tensor names of the signature the options name, and the input's shape and dtype."""
    signatures = {key: sig for key, sig in meta.signature_def.items() if not key.startswith("__")}
    if request.signature not in signatures:
        have = ", ".join(sorted(signatures)) or "none"
        raise TaskError(f"--signature {request.signature}: {where} has no such signature (it has {have})")
    signature = signatures[request.signature]
    if len(signature.inputs) != 1:
        raise TaskError(f"--signature {request.signature} of {where} takes {len(signature.inputs)} inputs "
                        f"({', '.join(sorted(signature.inputs))}): the no-code mode feeds one")
    (info,) = signature.inputs.values()
    outputs = sorted(signature.outputs)
    key = request.output_key
    if key is None:
        if len(outputs) != 1:
            raise TaskError(f"--signature {request.signature} of {where} has outputs {', '.join(outputs)}: choose "
                            "the logits with --output KEY")
        key = outputs[0]
    elif key not in signature.outputs:
        nearest = difflib.get_close_matches(key, outputs, n=5, cutoff=0.0)
        raise TaskError(f"--output {key}: signature {request.signature} of {where} has no such output "
                        f"(it has {', '.join(nearest)})")
    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    return info.name, signature.outputs[key].name, shape, tf.as_dtype(info.dtype)


def _read_graph_def(path: str) -> Any:
    """A frozen GraphDef (binary; a text one too); CheckpointIncomplete when it does not parse (it may
    still be being written: retried while it changes)."""
    graph_def = graph_pb2.GraphDef()
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise CheckpointIncomplete(f"cannot read {os.path.basename(path)}: {first_line(err)}") from err
    try:
        graph_def.ParseFromString(data)
    except DecodeError as err:
        try:
            from google.protobuf import text_format

            text_format.Parse(data.decode("utf-8"), graph_def)
        except Exception:
            raise CheckpointIncomplete(f"{os.path.basename(path)} is not a GraphDef: {first_line(err)}") from err
    return graph_def


def _carried_step(path: str) -> int | None:
    """The step a SavedModel's variables carry (an Estimator's global_step), or None."""
    prefix = os.path.join(path, "variables", "variables")
    if not os.path.isfile(prefix + ".index"):
        return None
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError):
        return None
    for key in _STEP_KEYS:
        if key in shapes and shapes[key] == [] and dtypes[key].is_integer:
            return int(reader.get_tensor(key))
    return None


def _unusable(checkpoint: Checkpoint, err: BaseException) -> Exception:
    """What an export that cannot be opened means: gone (deleted meanwhile: `missing`), a short read
    (retried while its files change), or its own fault (`failed`)."""
    if not os.path.exists(checkpoint.path):
        return CheckpointMissing(f"{checkpoint.name} was deleted before it could be read")
    if isinstance(err, CheckpointError):
        return err
    if isinstance(err, (tf.errors.DataLossError, tf.errors.OutOfRangeError, DecodeError)):
        return CheckpointIncomplete(f"cannot read {checkpoint.name}: {first_line(err)}")
    return CheckpointError(f"{checkpoint.name}: {first_line(err)}")
