"""`--meta-graph`: the trainer's own graph, imported from a checkpoint's `.meta`, as a graph task.

`inference(features)` imports the MetaGraphDef with `--input` mapped onto the validation features
and returns the `--output` tensor; the variables, their collections (trainable, moving averages)
and the global step come with it. GraphModel, the Restorer (EMA through
`ExponentialMovingAverage.variables_to_restore()` on the imported graph), the metrics and the
service path are those of a task written by hand.

Each checkpoint's own `.meta` is compared with the imported one (`verify_checkpoint`): a checkpoint
of another graph fails its row, saying so, rather than being restored into a graph it does not fit.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from evaluator.datafiles import Arrays, DataReader
from evaluator.errors import CheckpointError, TaskError, first_line

#: How many of the graph's names an unknown tensor name is shown with.
NEAREST = 5
#: Ops whose `shape` and `dtype` attributes say what the input takes.
_INPUT_OPS = ("Placeholder", "PlaceholderWithDefault", "PlaceholderV2")


def read_meta(path: str) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef in a `.meta` file (TaskError when it cannot be parsed)."""
    meta = meta_graph_pb2.MetaGraphDef()
    try:
        with open(path, "rb") as handle:
            meta.ParseFromString(handle.read())
    except (OSError, ValueError) as err:
        raise TaskError(f"--meta-graph: cannot read {path}: {first_line(err)}") from err
    except Exception as err:  # protobuf's DecodeError
        raise TaskError(f"--meta-graph: {path} is not a MetaGraphDef: {first_line(err)}") from err
    return meta


def graph_digest(graph_def: Any) -> str:
    """What a graph is, whatever the order of its nodes: a hash of each node (name, op, inputs,
    attributes, device) and of the function library."""
    digest = hashlib.sha256()
    for node in sorted(graph_def.node, key=lambda n: n.name):
        digest.update(node.SerializeToString(deterministic=True))
    digest.update(graph_def.library.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def check_tensor(graph_def: Any, name: str, option: str, where: str) -> Any:
    """The node of tensor `name` (`op:index`); TaskError naming the nearest names when there is none."""
    op = name.rpartition(":")[0]
    nodes = {node.name: node for node in graph_def.node}
    if op in nodes:
        return nodes[op]
    nearest = difflib.get_close_matches(op, list(nodes), n=NEAREST, cutoff=0.5)
    if not nearest:  # a different spelling altogether: the names that share a part with it
        parts = {p for p in op.replace("-", "/").replace("_", "/").split("/") if p}
        nearest = [n for n in nodes if parts & set(n.replace("-", "/").replace("_", "/").split("/"))][:NEAREST]
    hint = f"; nearest: {', '.join(n + ':0' for n in nearest)}" if nearest else ""
    raise TaskError(f"{option} {name}: no such tensor in {where}{hint}")


def check_path(graph_def: Any, input_name: str, output_name: str, where: str) -> None:
    """TaskError unless `output_name` is computed from `input_name` and needs no other placeholder
    (one that nothing feeds would fail every checkpoint's evaluation, not the start)."""
    nodes = {node.name: node for node in graph_def.node}
    stop = input_name.rpartition(":")[0]
    stack, seen, reached, needs = [output_name.rpartition(":")[0]], set(), False, []
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name == stop:
            reached = True
            continue
        node = nodes.get(name)
        if node is None:
            continue
        if node.op in ("Placeholder", "PlaceholderV2"):
            needs.append(f"{name}:0")
            continue
        stack.extend(edge.lstrip("^").split(":")[0] for edge in node.input)
    if needs:
        raise TaskError(f"--output {output_name} needs {', '.join(sorted(needs))} besides --input {input_name} in "
                        f"{where}: nothing feeds it; choose the logits computed from --input")
    if not reached:
        raise TaskError(f"--output {output_name} does not depend on --input {input_name} in {where}: choose the "
                        "logits computed from the input")


def input_signature(node: Any) -> tuple[list[int] | None, Any]:
    """What a placeholder takes: its shape ([-1 for unknown dims], None when unknown) and dtype."""
    if node.op not in _INPUT_OPS:
        return None, None
    dtype = tf.as_dtype(node.attr["dtype"].type) if "dtype" in node.attr else None
    shape = node.attr["shape"].shape if "shape" in node.attr else None
    if shape is None or shape.unknown_rank:
        return None, dtype
    return [d.size for d in shape.dim], dtype


def check_data(reader: DataReader, shape: list[int] | None, dtype: Any, name: str) -> Any:
    """TaskError when a set's features do not fit the input `name` (shape [batch, ...]); the numpy
    type to cast them to (numbers to the input's number type), or None."""
    for path, per_example in reader.feature_shapes().items():
        if shape is None:
            continue
        want = shape[1:]
        fits = len(per_example) == len(want) and all(w in (-1, h) for w, h in zip(want, per_example))
        if not fits:
            shown = "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"
            raise TaskError(f"--data {path}: the features are {list(per_example)} per example, but the input "
                            f"{name} takes {shown} (batch first)")
    if dtype is None or not (dtype.is_floating or dtype.is_integer):
        return None
    return dtype.as_numpy_dtype


class MetaGraphTask:
    """A graph task from a `.meta`: the trainer's graph, `input_name` fed, `output_name` evaluated."""

    def __init__(self, meta_path: str, input_name: str, output_name: str, reader: DataReader) -> None:
        self.meta_path = meta_path
        self.meta = read_meta(meta_path)
        where = os.path.basename(meta_path)
        graph_def = self.meta.graph_def
        node = check_tensor(graph_def, input_name, "--input", where)
        check_tensor(graph_def, output_name, "--output", where)
        check_path(graph_def, input_name, output_name, where)
        self.input_name = input_name
        self.outputs_named = f"--output {output_name}"
        self.output_name = output_name
        self.digest = graph_digest(graph_def)
        self._digests: dict[tuple[str, int, int], str] = {}
        self._reader = reader
        shape, dtype = input_signature(node)
        self._cast = check_data(reader, shape, dtype, input_name)

    def validation_data(self) -> Arrays | dict[str, Arrays]:
        return self._reader.validation_data(self._cast)

    def inference(self, features: tf.Tensor) -> tf.Tensor:
        """Import the graph (once per evaluation graph) with the input mapped onto `features`."""
        try:
            tf.compat.v1.train.import_meta_graph(self.meta, input_map={self.input_name: features}, clear_devices=True)
            return tf.compat.v1.get_default_graph().get_tensor_by_name(self.output_name)
        except (ValueError, KeyError, TypeError) as err:
            raise TaskError(f"--meta-graph {os.path.basename(self.meta_path)}: {first_line(err)}") from err

    def verify_checkpoint(self, path: str) -> None:
        """CheckpointError when the checkpoint's own `.meta` is another graph than the one imported
        (no `.meta`: the restore's check of the variables decides)."""
        meta_path = path + ".meta"
        try:
            stat = os.stat(meta_path)
        except OSError:
            return
        key = (meta_path, stat.st_size, stat.st_mtime_ns)
        digest = self._digests.get(key)
        if digest is None:
            meta = meta_graph_pb2.MetaGraphDef()
            try:
                with open(meta_path, "rb") as handle:
                    meta.ParseFromString(handle.read())
            except Exception as err:  # unreadable: the restore decides
                raise CheckpointError(f"cannot read {os.path.basename(meta_path)}: {first_line(err)}") from err
            digest = graph_digest(meta.graph_def)
            if len(self._digests) > 10_000:
                self._digests.clear()
            self._digests[key] = digest
        if digest != self.digest:
            raise CheckpointError(
                f"{os.path.basename(meta_path)} is another graph than the one imported from "
                f"{os.path.basename(self.meta_path)} (--meta-graph imports one graph): evaluate it with a --name "
                "of its own, or a task")
