"""sources/artifacts, models/artifact: SavedModel versions and frozen graphs listed like checkpoints
and evaluated, checked against numpy computations over the weights each was exported with."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluator import nocode
from evaluator.errors import CheckpointError, TaskError
from evaluator.sources.artifacts import FROZEN, SAVEDMODEL, ArtifactDirectory, listing
from tests.test_nocode import digits_data, numpy_accuracy, parse, train


def keras_versions(export_dir: Path, versions: int = 3) -> dict[int, float]:
    """A small Keras model trained an epoch between `model.export` of versions 1..N; each version's
    accuracy on the digits' validation set, computed in numpy from the weights it was exported with."""
    import keras

    keras.utils.set_random_seed(0)
    images, labels = digits_data.training()
    valid_images, valid_labels = digits_data.validation()
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    accuracy = {}
    for version in range(1, versions + 1):
        model.fit(images, labels, epochs=1, verbose=0)
        model.export(str(export_dir / str(version)), verbose=False)
        w1, b1, w2, b2 = model.get_weights()
        logits = np.maximum(valid_images @ w1 + b1, 0) @ w2 + b2
        accuracy[version] = float(np.mean(logits.argmax(axis=1) == valid_labels))
    return accuracy


def freeze(prefix: str, target: Path) -> None:
    """The checkpoint at `prefix` frozen as `freeze_graph` does it: its raw weights as constants."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        saver = v1.train.import_meta_graph(prefix + ".meta", clear_devices=True)
        with v1.Session(graph=graph) as session:
            saver.restore(session, prefix)
            frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["layer2/add"])
    tf.io.write_graph(frozen, str(target.parent), target.name, as_text=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, float]]:
    export_dir = tmp_path_factory.mktemp("keras") / "export"
    return export_dir, keras_versions(export_dir)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    base = tmp_path_factory.mktemp("frozen")
    model_dir = base / "model"
    saved = train(model_dir, steps=40, save_every=20)
    frozen_dir = base / "frozen"
    frozen_dir.mkdir()
    prefixes = {}
    for prefix in saved:
        step = int(prefix.rsplit("-", 1)[1])
        freeze(prefix, frozen_dir / f"frozen-{step}.pb")
        prefixes[step] = prefix
    return frozen_dir, prefixes


@pytest.fixture(scope="module")
def valid_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "valid.npz"
    np.savez(path, x=digits_data.validation()[0], y=digits_data.validation()[1])
    return path


def build(location: Path, data: Path, **options: object):  # type: ignore[no-untyped-def]
    from evaluator import models

    request = parse(data=(str(data),), **options)
    assert request is not None
    first = nocode.first(request, str(location))
    assert first is not None
    return models.build(nocode.task(request, first), device="cpu")


# -- what is listed ------------------------------------------------------------------------------

def test_versions_are_listed_once_written(tmp_path: Path, exported: tuple[Path, dict[int, float]]) -> None:
    export_dir, _ = exported
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    (copy / "eval").mkdir()  # the evaluator's summaries: not a version
    (copy / "temp-1700000000").mkdir()  # an Estimator exporter's temporary directory
    shutil.copytree(copy / "3", copy / "10")
    os.remove(copy / "10" / "saved_model.pb")  # being written: the graph comes last
    assert [(c.name, c.name_step) for c in listing(str(copy), SAVEDMODEL)] == [("1", 1), ("2", 2), ("3", 3)]
    source = ArtifactDirectory(str(copy), SAVEDMODEL)
    version = source.listed().checkpoints[0]
    assert source.complete(version) and source.fingerprint(version) == source.fingerprint(version)
    assert source.fingerprint(version) != source.fingerprint(source.listed().checkpoints[1])
    assert [(c.name, c.name_step) for c in listing(str(copy / "2"), SAVEDMODEL)] == [("2", 2)]  # one SavedModel


def test_frozen_files_take_the_last_number_as_step(tmp_path: Path) -> None:
    for name in ("frozen-1200.pb", "model_7.pb", "graph.pb", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [(c.name, c.name_step) for c in listing(str(tmp_path), FROZEN)] == [
        ("model_7.pb", 7), ("frozen-1200.pb", 1200), ("graph.pb", None)]


# -- what is evaluated --------------------------------------------------------------------------

def test_each_keras_version_gives_its_numpy_accuracy(exported: tuple[Path, dict[int, float]],
                                                     valid_npz: Path) -> None:
    export_dir, accuracy = exported
    model = build(export_dir, valid_npz, savedmodel=True)
    for version in listing(str(export_dir), SAVEDMODEL):
        outcome = model.evaluate(version)
        assert (outcome.step, outcome.ema_source) == (version.name_step, "none")
        assert outcome.metrics.accuracy == pytest.approx(accuracy[int(version.name)], abs=1e-9)


def test_a_frozen_graph_gives_its_checkpoint_accuracy(frozen: tuple[Path, dict[int, str]], valid_npz: Path) -> None:
    frozen_dir, prefixes = frozen
    model = build(frozen_dir, valid_npz, frozen_graph=True, input_name="x-input", output_name="layer2/add:0")
    for graph in listing(str(frozen_dir), FROZEN):
        outcome = model.evaluate(graph)
        assert outcome.step == graph.name_step
        assert outcome.metrics.accuracy == pytest.approx(numpy_accuracy(prefixes[graph.name_step], ema=False),
                                                         abs=1e-9)


def test_a_savedmodel_carrying_a_step(tmp_path: Path, valid_npz: Path) -> None:
    import tensorflow as tf

    class Linear(tf.Module):
        def __init__(self) -> None:
            self.global_step = tf.Variable(1234, dtype=tf.int64)
            self.weights = tf.Variable(np.eye(64, 10, dtype=np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32)])
        def __call__(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"logits": features @ self.weights, "probabilities": tf.nn.softmax(features @ self.weights)}

    module = Linear()
    tf.saved_model.save(module, str(tmp_path / "7"), signatures={"predict": module.__call__})
    with pytest.raises(TaskError) as err:
        build(tmp_path / "7", valid_npz, savedmodel=True)
    assert str(err.value) == "--signature serving_default: 7 has no such signature (it has predict)"
    with pytest.raises(TaskError) as err:
        build(tmp_path / "7", valid_npz, savedmodel=True, signature="predict")
    assert str(err.value) == ("--signature predict of 7 has outputs logits, probabilities: choose the logits with "
                              "--output KEY")
    with pytest.raises(TaskError) as err:
        build(tmp_path / "7", valid_npz, savedmodel=True, signature="predict", output_name="logit")
    assert str(err.value) == ("--output logit: signature predict of 7 has no such output (it has logits, "
                              "probabilities)")
    model = build(tmp_path / "7", valid_npz, savedmodel=True, signature="predict", output_name="logits")
    (version,) = listing(str(tmp_path / "7"), SAVEDMODEL)
    outcome = model.evaluate(version)
    images, labels = digits_data.validation()
    assert outcome.step == 1234  # carried, rather than the directory's 7
    assert outcome.metrics.accuracy == pytest.approx(float(np.mean(images[:, :10].argmax(1) == labels)), abs=1e-9)


def test_a_later_export_that_does_not_fit_fails_its_row(tmp_path: Path, frozen: tuple[Path, dict[int, str]],
                                                        valid_npz: Path) -> None:
    frozen_dir, _ = frozen
    copy = tmp_path / "frozen"
    shutil.copytree(frozen_dir, copy)
    (copy / "frozen-90.pb").write_bytes(b"\x08\x01garbage that is no GraphDef")
    model = build(copy, valid_npz, frozen_graph=True, input_name="x-input:0", output_name="layer2/add:0")
    late = listing(str(copy), FROZEN)[-1]
    assert late.name == "frozen-90.pb"
    with pytest.raises(CheckpointError) as err:
        model.evaluate(late)
    assert str(err.value).startswith("frozen-90.pb is not a GraphDef")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300))
def test_any_bytes_as_a_graph(tmp_path: Path, content: bytes) -> None:
    """Arbitrary bytes as a frozen graph or a `.meta`: a GraphDef (protobuf parses much), or the
    project's error; never a crash."""
    from evaluator.errors import CheckpointIncomplete
    from evaluator.models.artifact import _read_graph_def
    from evaluator.models.imported import read_meta

    path = tmp_path / "graph.pb"
    path.write_bytes(content)
    try:
        _read_graph_def(str(path))
    except CheckpointIncomplete:
        pass
    try:
        read_meta(str(path))
    except TaskError:
        pass


def test_a_frozen_export_calls_its_output_logits_beside_a_logits_scope(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluator's `--export frozen` of a task whose graph has a `logits` scope (bench/workload.py):
    the output is still `logits`, so `--frozen-graph --output logits` reads it."""
    import tensorflow as tf

    from bench import workload
    from evaluator.models.artifact import _read_graph_def
    from evaluator.models.export import graph_export

    monkeypatch.setenv("BENCH_WIDTH", "8")
    (prefix,) = workload.write_checkpoints(str(tmp_path / "model"), 1)
    target = tmp_path / "frozen" / "1.pb"
    graph_export("frozen", workload.TASK, tf.TensorSpec([None, workload.FEATURES], tf.float32), prefix, ema=True,
                 ema_name="ExponentialMovingAverage", target=str(target))
    nodes = {node.name: node for node in _read_graph_def(str(target)).node}
    assert nodes["logits"].op == "Identity" and "logits_1" not in nodes


def test_names_that_are_no_versions(tmp_path: Path, exported: tuple[Path, dict[int, float]]) -> None:
    export_dir, _ = exported
    for name in ("²", "٣", "1" * 30, "0007"):
        shutil.copytree(export_dir / "1", tmp_path / name)
    (tmp_path / "frozen-²-١٢.pb").write_bytes(b"x")
    assert [(c.name, c.name_step) for c in listing(str(tmp_path), SAVEDMODEL)] == [("0007", 7)]
    assert [(c.name, c.name_step) for c in listing(str(tmp_path), FROZEN)] == [("frozen-²-١٢.pb", None)]


def test_a_version_deleted_before_it_is_read_is_missing(tmp_path: Path, exported: tuple[Path, dict[int, float]],
                                                        valid_npz: Path) -> None:
    from evaluator.errors import CheckpointMissing

    export_dir, _ = exported
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    model = build(copy, valid_npz, savedmodel=True)
    version = listing(str(copy), SAVEDMODEL)[-1]
    shutil.rmtree(version.path)  # TF Serving's exporter keeps the last N
    with pytest.raises(CheckpointMissing, match="3 was deleted before it could be read"):
        model.evaluate(version)


def test_savedmodels_that_serve_nothing(tmp_path: Path, exported: tuple[Path, dict[int, float]],
                                        valid_npz: Path) -> None:
    import tensorflow as tf

    export_dir, _ = exported
    garbled = tmp_path / "garbled" / "1"
    shutil.copytree(export_dir / "1", garbled)
    (garbled / "saved_model.pb").write_bytes(b"\x0a\xff\xff garbage")
    with pytest.raises(TaskError, match="^1: cannot read the SavedModel: "):
        build(garbled, valid_npz, savedmodel=True)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        features = tf.compat.v1.placeholder(tf.float32, [None, 64])
        weights = tf.compat.v1.Variable(np.eye(64, 10, dtype=np.float32))
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(tmp_path / "training" / "4"))
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": features}, {"y": features @ weights})
        builder.add_meta_graph_and_variables(session, ["train"], signature_def_map={"serving_default": signature})
        builder.save()
    with pytest.raises(TaskError) as err:
        build(tmp_path / "training" / "4", valid_npz, savedmodel=True)
    assert str(err.value) == "4 has no MetaGraph tagged 'serve' (its tags: train)"
