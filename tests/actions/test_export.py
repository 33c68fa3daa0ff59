"""actions/export: the best checkpoints kept (linked, or copied from open files after training
deleted them), found by tf.train.latest_checkpoint, pruned to --keep-best; the SavedModel and the
frozen graph of the evaluated weights give the recorded accuracy when served."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import tensorflow as tf

from evaluator import checkpoints
from evaluator.actions import Recorded
from evaluator.actions.export import BestExport
from evaluator.evaluation import Evaluation, Status
from evaluator.models.graph import GraphModel
from evaluator.store import Store
from evaluator.task import load_task
from tests.conftest import DIGITS, DIGITS_TASK, ROOT, sqlite_url

WHEN = datetime(2026, 11, 30, tzinfo=timezone.utc)


def row(name: str, step: int, accuracy: float, model_dir: Path | str = "/m") -> Evaluation:
    return Evaluation(str(model_dir), name, step, Status.OK, WHEN, accuracy=accuracy, loss=1 - accuracy, examples=360,
                      metrics={"validation": {"accuracy": accuracy, "loss": 1 - accuracy, "examples": 360}},
                      goals={"accuracy": "max", "loss": "min"}, fingerprint=f"{name}:{accuracy}")


def exporter(directory: Path, model_dir: Path, store: Store, keep: int = 1, metric: str | None = None,
             formats: tuple[str, ...] = ("checkpoint",), model: Any = None) -> BestExport:
    return BestExport(str(directory), str(model_dir), metric, keep, formats, structlog.get_logger(), store, "default",
                      model)


def recorded(store: Store, evaluation: Evaluation, model: Any = None, held: dict[str, Any] | None = None) -> Recorded:
    """The row written (as the loop does before any action), and what the action gets of it."""
    assert store.record(evaluation)
    if held is None:
        held = checkpoints.hold(os.path.join(evaluation.model_dir, evaluation.checkpoint))
    return Recorded(evaluation, held, model)


def copy_of(trained_dir: Path, tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    return model_dir


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A real store on each backend: the rows the export is decided from, and its lock."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "state" / "evaluations.db")
    else:
        url = request.getfixturevalue("pg_url")
    with Store.open(url, create=True) as opened:
        opened.upgrade()
        yield opened


def test_the_best_is_kept_even_after_training_deleted_it(tmp_path: Path, trained_dir: Path, store: Store) -> None:
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    action = exporter(export, model_dir, store, keep=2)
    accuracies = {"model.ckpt-20": 0.7, "model.ckpt-40": 0.9, "model.ckpt-60": 0.8}
    for name, accuracy in accuracies.items():
        held = checkpoints.hold(str(model_dir / name))  # opened before the evaluation...
        for path in model_dir.glob(name + ".*"):
            path.unlink()  # ...deleted by max_to_keep during it
        action.after(recorded(store, row(name, int(name.rsplit("-", 1)[1]), accuracy, model_dir), held=held))
        checkpoints.release(held)
    assert tf.train.latest_checkpoint(str(export)) == str(export / "model.ckpt-40")
    assert sorted(p.name for p in export.glob("model.ckpt-*.index")) == ["model.ckpt-40.index", "model.ckpt-60.index"]
    reader = tf.train.load_checkpoint(str(export / "model.ckpt-40"))
    original = tf.train.load_checkpoint(str(trained_dir / "model.ckpt-40"))
    assert np.array_equal(reader.get_tensor("layer1/weights"), original.get_tensor("layer1/weights"))
    assert not list(export.glob(".*"))  # nothing half-written left behind

    restarted = exporter(export, model_dir, store, keep=2)  # the manifest is read back: no double keeping
    assert [(k.checkpoint, k.value) for k in restarted.kept] == [("model.ckpt-40", 0.9), ("model.ckpt-60", 0.8)]


def test_a_removed_model_directory_is_not_made_again(tmp_path: Path, trained_dir: Path, store: Store) -> None:
    """The model directory removed between a row and its keeping (the user's `rm -rf`): the default
    MODEL_DIR/export/best is not made, so the directory stays gone (and `watch` says it is missing);
    the next batch decides again."""
    model_dir = copy_of(trained_dir, tmp_path)
    action = exporter(model_dir / "export" / "best", model_dir, store)
    one = recorded(store, row("model.ckpt-60", 60, 0.9, model_dir))
    shutil.rmtree(model_dir)
    with pytest.raises(FileNotFoundError):
        action.after(one)
    checkpoints.release(one.held)
    assert not model_dir.exists()
    shutil.copytree(trained_dir, model_dir)  # back
    two = recorded(store, row("model.ckpt-20", 20, 0.5, model_dir))
    action.after(two)  # cannot enter on its own merit; decided again because the last decision failed
    checkpoints.release(two.held)
    assert tf.train.latest_checkpoint(str(model_dir / "export" / "best")) == str(model_dir / "export" / "best" / "model.ckpt-60")


def test_same_file_system_means_hard_links(tmp_path: Path, trained_dir: Path, store: Store) -> None:
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    one = recorded(store, row("model.ckpt-60", 60, 0.9, model_dir))
    exporter(export, model_dir, store).after(one)
    checkpoints.release(one.held)
    kept = export / "model.ckpt-60.index"
    assert kept.stat().st_ino == (model_dir / "model.ckpt-60.index").stat().st_ino


def test_catching_up_keeps_the_best_recorded_row_still_on_disk(tmp_path: Path, trained_dir: Path,
                                                                store: Store) -> None:
    """Rows recorded before a crash (or before --keep-best was asked for): the best one is kept at start."""
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    rows = [row("model.ckpt-20", 20, 0.5, model_dir), row("model.ckpt-40", 40, 0.95, model_dir),
            row("model.ckpt-60", 60, 0.9, model_dir)]
    store.record_many(rows)
    exporter(export, model_dir, store).catch_up(rows)
    assert tf.train.latest_checkpoint(str(export)) == str(export / "model.ckpt-40")


def test_lower_is_better_for_a_falling_metric(tmp_path: Path, trained_dir: Path, store: Store) -> None:
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    action = exporter(export, model_dir, store, metric="loss")
    for name, step, accuracy in (("model.ckpt-20", 20, 0.6), ("model.ckpt-40", 40, 0.8), ("model.ckpt-60", 60, 0.7)):
        one = recorded(store, row(name, step, accuracy, model_dir))
        action.after(one)
        checkpoints.release(one.held)
    assert action.goal == "min" and [k.checkpoint for k in action.kept] == ["model.ckpt-40"]  # loss 0.2


def fake_checkpoints(model_dir: Path, steps: range) -> None:
    """Checkpoint files as the export sees them (an index and one data shard each)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for step in steps:
        (model_dir / f"model.ckpt-{step}.index").write_bytes(b"index %d" % step)
        (model_dir / f"model.ckpt-{step}.data-00000-of-00001").write_bytes(b"data %d" % step)


def kept_state(export: Path) -> tuple[str | None, list[str], dict[str, Any]]:
    """What a reader of the export sees: the state file's best, the checkpoints there, best.json."""
    best = tf.train.latest_checkpoint(str(export))
    return (os.path.basename(best) if best else None, sorted(p.name[:-6] for p in export.glob("*.index")),
            json.loads((export / "best.json").read_text()))


@pytest.mark.parametrize("keep", [1, 2])
def test_workers_interleaved_keep_what_the_database_ranks_best(tmp_path: Path, store: Store, keep: int) -> None:
    """Worker 1 evaluates the worst and is paused before its action; worker 2 evaluates the rest,
    the best among them; the second best appears and worker 1 evaluates it, then acts on both.
    Each worker alone ranked what it had seen: worker 1 kept the second best (and, with keep 1,
    left two checkpoints). Decided from every worker's rows, the export is the database's best."""
    model_dir = tmp_path / "model"
    fake_checkpoints(model_dir, range(10, 60, 10))
    export = tmp_path / "export"
    one, two = (exporter(export, model_dir, store, keep=keep) for _ in range(2))
    worst = recorded(store, row("model.ckpt-10", 10, 0.3, model_dir))  # worker 1: recorded, paused
    rest = [recorded(store, row(f"model.ckpt-{s}", s, a, model_dir)) for s, a in ((20, 0.9), (30, 0.5), (40, 0.6))]
    two.after_many(rest)
    second = recorded(store, row("model.ckpt-50", 50, 0.8, model_dir))
    one.after(worst)
    one.after(second)
    top = store.top(str(model_dir), "default", None, keep)
    best, present, manifest = kept_state(export)
    assert best == "model.ckpt-20" == top.rows[0].checkpoint  # what report --best names
    assert present == sorted(r.checkpoint for r in top.rows) == sorted(["model.ckpt-20", "model.ckpt-50"][:keep])
    assert [k["checkpoint"] for k in manifest["kept"]] == [r.checkpoint for r in top.rows]
    assert sorted(p.name for p in export.iterdir()) == sorted(
        ["best.json", "checkpoint", *(f"{c}{suffix}" for c in present for suffix in (".index", ".data-00000-of-00001"))])


def test_workers_at_once_leave_exactly_the_best(tmp_path: Path, store: Store) -> None:
    """Two workers deciding at the same moment, over and over (threads, each its own action): no
    failed rename, no stale file, and the state file names the best at the end."""
    model_dir = tmp_path / "model"
    fake_checkpoints(model_dir, range(1, 41))
    export = tmp_path / "export"
    accuracy = {step: ((step * 37) % 41) / 41 for step in range(1, 41)}
    errors: list[BaseException] = []

    def worker(steps: range) -> None:
        action = exporter(export, model_dir, store, keep=3)
        try:
            for step in steps:
                action.after(recorded(store, row(f"model.ckpt-{step}", step, accuracy[step], model_dir)))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(steps,)) for steps in (range(1, 41, 2), range(2, 41, 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    best_three = sorted(accuracy, key=lambda step: (-accuracy[step], step))[:3]
    best, present, manifest = kept_state(export)
    assert best == f"model.ckpt-{best_three[0]}"
    assert present == sorted(f"model.ckpt-{step}" for step in best_three)
    assert [k["step"] for k in manifest["kept"]] == best_three
    assert not list(export.glob(".*"))


def test_a_best_row_whose_files_are_gone_is_said_so(tmp_path: Path, store: Store) -> None:
    """Another worker's best row, its checkpoint deleted before this worker could place it: listed as
    unavailable in best.json (and logged), the rest kept."""
    model_dir = tmp_path / "model"
    fake_checkpoints(model_dir, range(10, 30, 10))
    export = tmp_path / "export"
    store.record(row("model.ckpt-99", 99, 0.99, model_dir))  # another worker's, files long gone
    exporter(export, model_dir, store, keep=2).after(recorded(store, row("model.ckpt-10", 10, 0.5, model_dir)))
    best, present, manifest = kept_state(export)
    assert best == "model.ckpt-10" and present == ["model.ckpt-10"]
    assert manifest["unavailable"] == [{"checkpoint": "model.ckpt-99", "step": 99, "value": 0.99}]


def digits_validation() -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(DIGITS))
    import digits_data

    return digits_data.validation()


def served_accuracy(serve: Any) -> float:
    features, labels = digits_validation()
    logits = serve(features)
    return float(np.mean(np.argmax(logits, axis=1) == labels))


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(sqlite_url(tmp_path / "state" / "evaluations.db"), create=True) as opened:
        opened.upgrade()
        yield opened


def test_graph_savedmodel_and_frozen_graph_give_the_recorded_accuracy(tmp_path: Path, trained_dir: Path,
                                                                      sqlite_store: Store) -> None:
    model_dir = copy_of(trained_dir, tmp_path)
    export = tmp_path / "export"
    model = GraphModel.build(load_task(DIGITS_TASK), device="cpu")
    ckpt = checkpoints.at(str(model_dir), "model.ckpt-40")
    assert ckpt is not None
    held = checkpoints.hold(ckpt.path)
    outcome = model.evaluate(ckpt)
    evaluation = row("model.ckpt-40", 40, outcome.metrics.accuracy, model_dir)  # type: ignore[arg-type]
    action = exporter(export, model_dir, sqlite_store, formats=("checkpoint", "savedmodel", "frozen"))
    action.after(recorded(sqlite_store, evaluation, model, held))
    checkpoints.release(held)
    assert action.kept[0].exports == {"savedmodel": "written", "frozen": "written"}

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


def test_keras_savedmodel_gives_the_recorded_accuracy(tmp_path: Path, sqlite_store: Store) -> None:
    """A TF2 task's SavedModel holds the weights evaluated: the averages (use_ema), not the raw ones.
    Written by the worker that has them loaded; one another worker placed first stays pending until
    then, and one left pending (its worker stopped first) is written at the next start, restored
    from the kept files."""
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
    first, last = (checkpoints.at(str(tmp_path / "k"), name) for name in (saved[0], saved[-1]))
    assert first is not None and last is not None
    held = checkpoints.hold(last.path)
    outcome = model.evaluate(last)
    assert outcome.ema_source == "keras"
    export = tmp_path / "export"
    evaluation = row(last.name, 40, outcome.metrics.accuracy, tmp_path / "k")  # type: ignore[arg-type]
    one = recorded(sqlite_store, evaluation, model, held)
    formats = ("checkpoint", "savedmodel")
    other = exporter(export, tmp_path / "k", sqlite_store, formats=formats)
    other.after(Recorded(one.evaluation, one.held, None))  # a worker without the weights: placed, export pending
    assert other.kept[0].exports == {"savedmodel": "pending"} and not (export / "savedmodel").exists()
    exporter(export, tmp_path / "k", sqlite_store, formats=formats).after(one)  # the one with them
    checkpoints.release(held)

    def served(path: Path) -> float:
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        (name,) = signature.structured_input_signature[1]
        return served_accuracy(lambda x: signature(**{name: tf.constant(x)})["logits"].numpy())

    assert served(export / "savedmodel" / "40") == outcome.metrics.accuracy
    assert os.path.isfile(export / (last.name + ".index"))

    shutil.rmtree(export / "savedmodel")  # as if the worker that evaluated it had stopped first
    manifest = json.loads((export / "best.json").read_text())
    manifest["kept"][0]["exports"] = {"savedmodel": "pending"}
    (export / "best.json").write_text(json.dumps(manifest))
    model.evaluate(first)  # the model now holds other weights
    exporter(export, tmp_path / "k", sqlite_store, formats=formats, model=model).catch_up([])
    assert served(export / "savedmodel" / "40") == outcome.metrics.accuracy
    assert json.loads((export / "best.json").read_text())["kept"][0]["exports"] == {"savedmodel": "written"}
