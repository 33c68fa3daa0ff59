"""Exports of the weights a checkpoint was evaluated with (the averages, when used): a SavedModel
with a `serving_default` signature (features -> {"logits": outputs}), or for graph tasks a frozen
GraphDef (variables as constants, the classic freeze_graph). Each is written under a temporary
name and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from evaluator import checkpoints
from evaluator.errors import TaskError
from evaluator.restore import Restorer

OUTPUT = "logits"


def keras_savedmodel(model: Any, features: tf.TensorSpec, forward: Callable[[tf.Tensor], tf.Tensor],
                     target: str) -> None:
    """A TF2 model as it is now (its restored weights), served by `forward`."""
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[features])
    def serve(batch: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT: forward(batch)}

    module.serve = serve
    _atomically(target, lambda path: tf.saved_model.save(module, path, signatures={"serving_default": serve}))


def graph_export(fmt: str, task: Any, features: tf.TensorSpec, prefix: str, *, ema: bool, ema_name: str,
                 target: str) -> None:
    """A graph task's serving graph (a features placeholder, the task's inference) with the checkpoint
    at `prefix` restored as it was evaluated, written as a SavedModel or a frozen GraphDef."""
    from tensorflow.python.util import deprecation  # the v1 APIs are the point here: no warnings

    with deprecation.silence():
        _graph_export(fmt, task, features, prefix, ema=ema, ema_name=ema_name, target=target)


def _graph_export(fmt: str, task: Any, features: tf.TensorSpec, prefix: str, *, ema: bool, ema_name: str,
                  target: str) -> None:
    graph = tf.Graph()
    with graph.as_default():
        placeholder = tf.compat.v1.placeholder(features.dtype, features.shape, name="features")
        outputs = tf.identity(task.inference(placeholder), name=OUTPUT)
        restorer = Restorer(graph, ema=ema, ema_name=ema_name)
        with tf.compat.v1.Session(graph=graph) as session:
            checkpoint = checkpoints.Checkpoint(os.path.basename(prefix), prefix, checkpoints.step_from_name(prefix))
            restorer.restore(session, checkpoint)
            unrestored = restorer.unrestored()
            if unrestored:  # a SavedModel saves every variable: give these their initial values
                session.run(tf.compat.v1.variables_initializer(unrestored))
            if fmt == "frozen":
                frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                    session, graph.as_graph_def(), [outputs.op.name])
                _name_output(frozen, outputs.op.name)
                _atomically(target, lambda path: _write_bytes(path, frozen.SerializeToString()))
            elif fmt == "savedmodel":
                signature = tf.compat.v1.saved_model.predict_signature_def({"features": placeholder}, {OUTPUT: outputs})

                def save(path: str) -> None:
                    builder = tf.compat.v1.saved_model.Builder(path)
                    builder.add_meta_graph_and_variables(session, [tf.compat.v1.saved_model.tag_constants.SERVING],
                                                         signature_def_map={"serving_default": signature})
                    builder.save()

                _atomically(target, save)
            else:
                raise TaskError(f"unknown export format {fmt!r}")


def _name_output(graph_def: Any, name: str) -> None:
    """Call the output `logits` in a frozen graph where a task's `logits` scope took the name (the
    identity became `logits_1`; no node is called `logits`, only the ops below the scope)."""
    if name != OUTPUT and all(node.name != OUTPUT for node in graph_def.node):
        for node in graph_def.node:
            if node.name == name:
                node.name = OUTPUT


def _atomically(target: str, write: Callable[[str], None]) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temporary = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp-{os.getpid()}")
    _remove(temporary)
    write(temporary)
    _remove(target)
    os.replace(temporary, target)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
