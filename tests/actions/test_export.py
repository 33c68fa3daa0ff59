"""actions/export: the best checkpoints kept (linked, or copied from open files after training
deleted them), found by tf.train.latest_checkpoint, pruned to --keep-best; the SavedModel and the
frozen graph of the evaluated weights give the recorded accuracy when served."""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import tensorflow as tf

from evaluator import checkpoints
from evaluator.actions import Recorded
from evaluator.actions.export import BestExport
from evaluator.evaluation import Evaluation, Status
from evaluator.models.graph import GraphModel
from evaluator.task import load_task
from tests.conftest import DIGITS, DIGITS_TASK, ROOT

WHEN = datetime(2026, 11, 30, tzinfo=timezone.utc)


def row(name: str, step: int, accuracy: float) -> Evaluation:
    return Evaluation("/m", name, step, Status.OK, WHEN, accuracy=accuracy, loss=1 - accuracy, examples=360,
                      metrics={"validation": {"accuracy": accuracy, "loss": 1 - accuracy, "examples": 360}},
                      goals={"accuracy": "max", "loss": "min"})


def exporter(directory: Path, model_dir: Path, keep: int = 1, metric: str | None = None,
             formats: tuple[str, ...] = ("checkpoint",)) -> BestExport:
    return BestExport(str(directory), str(model_dir), metric, keep, formats, structlog.get_logger())


def copy_of(trained_dir: Path, tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    return model_dir


def test_the_best_is_kept_even_after_training_deleted_it(tmp_path: Path, trained_dir: Path) -> None:
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    action = exporter(export, model_dir, keep=2)
    accuracies = {"model.ckpt-20": 0.7, "model.ckpt-40": 0.9, "model.ckpt-60": 0.8}
    for name, accuracy in accuracies.items():
        held = checkpoints.hold(str(model_dir / name))  # opened before the evaluation...
        for path in model_dir.glob(name + ".*"):
            path.unlink()  # ...deleted by max_to_keep during it
        action.after(Recorded(row(name, int(name.rsplit("-", 1)[1]), accuracy), held))
        checkpoints.release(held)
    assert tf.train.latest_checkpoint(str(export)) == str(export / "model.ckpt-40")
    assert sorted(p.name for p in export.glob("model.ckpt-*.index")) == ["model.ckpt-40.index", "model.ckpt-60.index"]
    reader = tf.train.load_checkpoint(str(export / "model.ckpt-40"))
    original = tf.train.load_checkpoint(str(trained_dir / "model.ckpt-40"))
    assert np.array_equal(reader.get_tensor("layer1/weights"), original.get_tensor("layer1/weights"))
    assert not list(export.glob(".*.tmp"))  # nothing half-written left behind

    restarted = exporter(export, model_dir, keep=2)  # the manifest is read back: no double keeping
    assert [(k.checkpoint, k.value) for k in restarted.kept] == [("model.ckpt-40", 0.9), ("model.ckpt-60", 0.8)]


def test_same_file_system_means_hard_links(tmp_path: Path, trained_dir: Path) -> None:
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    held = checkpoints.hold(str(model_dir / "model.ckpt-60"))
    exporter(export, model_dir).after(Recorded(row("model.ckpt-60", 60, 0.9), held))
    checkpoints.release(held)
    kept = export / "model.ckpt-60.index"
    assert kept.stat().st_ino == (model_dir / "model.ckpt-60.index").stat().st_ino


def test_catching_up_keeps_the_best_recorded_row_still_on_disk(tmp_path: Path, trained_dir: Path) -> None:
    """Rows recorded before a crash (or before --keep-best was asked for): the best one is kept at start."""
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    exporter(export, model_dir).catch_up([row("model.ckpt-20", 20, 0.5), row("model.ckpt-40", 40, 0.95),
                                          row("model.ckpt-60", 60, 0.9)])
    assert tf.train.latest_checkpoint(str(export)) == str(export / "model.ckpt-40")


def test_lower_is_better_for_a_falling_metric(tmp_path: Path, trained_dir: Path) -> None:
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    action = exporter(export, model_dir, metric="loss")
    for name, step, accuracy in (("model.ckpt-20", 20, 0.6), ("model.ckpt-40", 40, 0.8), ("model.ckpt-60", 60, 0.7)):
        held = checkpoints.hold(str(model_dir / name))
        action.after(Recorded(row(name, step, accuracy), held))
        checkpoints.release(held)
    assert action.goal == "min" and [k.checkpoint for k in action.kept] == ["model.ckpt-40"]  # loss 0.2


def digits_validation() -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(DIGITS))
    import digits_data

    return digits_data.validation()


def served_accuracy(serve: Any) -> float:
    features, labels = digits_validation()
    logits = serve(features)
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def test_graph_savedmodel_and_frozen_graph_give_the_recorded_accuracy(tmp_path: Path, trained_dir: Path) -> None:
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    model = GraphModel.build(load_task(DIGITS_TASK), device="cpu")
    ckpt = checkpoints.at(str(model_dir), "model.ckpt-40")
    assert ckpt is not None
    held = checkpoints.hold(ckpt.path)
    outcome = model.evaluate(ckpt)
    recorded = row("model.ckpt-40", 40, outcome.metrics.accuracy)  # type: ignore[arg-type]
    exporter(export, model_dir, formats=("checkpoint", "savedmodel", "frozen")).after(Recorded(recorded, held, model))
    checkpoints.release(held)

    loaded = tf.saved_model.load(str(export / "savedmodel" / "40"))
    signature = loaded.signatures["serving_default"]
    assert served_accuracy(lambda x: signature(features=tf.constant(x))["logits"].numpy()) == outcome.metrics.accuracy

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((export / "frozen" / "40.pb").read_bytes())
    assert not [n for n in graph_def.node if n.op in ("VariableV2", "VarHandleOp")]  # constants only
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            accuracy = served_accuracy(lambda x: session.run("logits:0", {"features:0": x}))
    assert accuracy == outcome.metrics.accuracy


def test_keras_savedmodel_gives_the_recorded_accuracy(tmp_path: Path) -> None:
    """A TF2 task's SavedModel holds the weights evaluated: the averages (use_ema), not the raw ones."""
    sys.path[:0] = [str(ROOT / "examples" / "keras"), str(DIGITS)]
    import keras_model
    import train as keras_train

    from evaluator.models.keras import KerasModel

    saved = keras_train.train_loop(str(tmp_path / "k"), steps=40, save_every=20, kind="functional")

    class Task:
        def model(self) -> Any:
            return keras_model.build("functional")

        def validation_data(self) -> Any:
            return digits_validation()

    model = KerasModel.build(Task(), device="cpu")
    ckpt = checkpoints.at(str(tmp_path / "k"), saved[-1])
    assert ckpt is not None
    held = checkpoints.hold(ckpt.path)
    outcome = model.evaluate(ckpt)
    assert outcome.ema_source == "keras"
    export = tmp_path / "export"
    recorded = row(ckpt.name, 40, outcome.metrics.accuracy)  # type: ignore[arg-type]
    exporter(export, tmp_path / "k", formats=("checkpoint", "savedmodel")).after(Recorded(recorded, held, model))
    checkpoints.release(held)
    signature = tf.saved_model.load(str(export / "savedmodel" / "40")).signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    assert served_accuracy(lambda x: signature(**{name: tf.constant(x)})["logits"].numpy()) == outcome.metrics.accuracy
    assert os.path.isfile(export / (ckpt.name + ".index"))
