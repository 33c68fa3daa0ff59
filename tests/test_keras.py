"""models/keras.py: TF2 checkpoints of every layout, restored by object matching, with each layout's
averages; every figure checked against an independent numpy forward pass over the tensors read
from the checkpoint by their full names (or from the weight file with h5py)."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tensorflow as tf

from evaluator import checkpoints
from evaluator.errors import CheckpointError, TaskError
from evaluator.models.keras import KerasModel
from tests import keras_layouts
from tests.conftest import ROOT

sys.path[:0] = [str(ROOT / "examples" / "keras"), str(ROOT / "examples" / "digits")]

import digits_data  # noqa: E402
import keras_model  # noqa: E402
import train as keras_train  # noqa: E402

X, Y = digits_data.validation()


class Task:
    """A TF2 task around a model factory."""

    def __init__(self, factory: Any, root: str = "model") -> None:
        self.factory = factory
        self.checkpoint_root = root

    def model(self) -> Any:
        return self.factory()

    def validation_data(self) -> tuple[np.ndarray, np.ndarray]:
        return X, Y


def numpy_figures(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of relu(x W1 + b1) W2 + b2, in float64 numpy."""
    logits = np.maximum(X.astype(np.float64) @ w1 + b1, 0) @ w2 + b2
    top = logits.max(axis=1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    return float((logits.argmax(axis=1) == Y).mean()), float(-log_softmax[np.arange(len(Y)), Y].mean())


def by_full_name(path: str) -> dict[str, np.ndarray]:
    """Every variable of a checkpoint by the full name its object graph records (independent of
    the evaluator's matching)."""
    from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

    reader = tf.train.load_checkpoint(path)
    graph = TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return {a.full_name: reader.get_tensor(a.checkpoint_key) for node in graph.nodes for a in node.attributes
            if a.name == "VARIABLE_VALUE"}


def keras3_tensors(path: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The model's weights as the Keras 3 optimizer lists them (`optimizer/_trainable_variables/i`),
    and their averages (`adam/..._average`, in the order the optimizer created them)."""
    from tensorflow.core.protobuf.trackable_object_graph_pb2 import TrackableObjectGraph

    reader = tf.train.load_checkpoint(path)
    graph = TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))

    def child(node: int, name: str) -> int:
        return next(ref.node_id for ref in graph.nodes[node].children if ref.local_name == name)

    listed = child(child(0, "optimizer"), "_trainable_variables")
    raw = [reader.get_tensor(graph.nodes[ref.node_id].attributes[0].checkpoint_key)
           for ref in sorted(graph.nodes[listed].children, key=lambda r: int(r.local_name))]
    averages = sorted((a.checkpoint_key for node in graph.nodes for a in node.attributes
                       if a.full_name.endswith("_average")), key=lambda key: int(key.split("/")[2]))
    return raw, [reader.get_tensor(key) for key in averages]


def figures(model: KerasModel, path: str) -> tuple[float, float, Any]:
    outcome = model.evaluate(checkpoints.at(str(Path(path).parent), path))  # type: ignore[arg-type]
    return outcome.metrics.accuracy, outcome.metrics.loss, outcome


def assert_close(ours: tuple[float, float], theirs: tuple[float, float]) -> None:
    assert ours[0] == pytest.approx(theirs[0], abs=1e-6) and ours[1] == pytest.approx(theirs[1], rel=1e-5)


# -- Keras 3 custom loop: Sequential, functional, subclassed; use_ema ---------------------------------

@pytest.fixture(scope="module", params=["sequential", "named", "functional", "subclassed"])
def keras3_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    model_dir = tmp_path_factory.mktemp(f"keras3-{request.param}")
    import keras

    keras_model.build("sequential")  # shift Keras' name counters: names differ from the evaluator's
    saved = keras_train.train_loop(str(model_dir), steps=60, save_every=20, kind=request.param)
    keras.backend.clear_session()
    return request.param, saved


def test_keras3_use_ema_every_layout(keras3_run: tuple[str, list[str]]) -> None:
    """Averages from `optimizer(use_ema=True)`; --no-ema gives the raw weights; numpy agrees on both."""
    kind, saved = keras3_run
    with_ema = KerasModel.build(Task(lambda: keras_model.build(kind)), device="cpu")
    raw = KerasModel.build(Task(lambda: keras_model.build(kind)), device="cpu", ema=False)
    for step, path in zip((20, 40, 60), saved):
        raw_weights, averages = keras3_tensors(path)
        ours_ema = figures(with_ema, path)
        ours_raw = figures(raw, path)
        assert ours_ema[2].ema_source == "keras" and ours_ema[2].step == step
        assert ours_raw[2].ema_source == "none"
        assert_close(ours_ema[:2], numpy_figures(*averages))
        assert_close(ours_raw[:2], numpy_figures(*raw_weights))
        assert ours_ema[1] != pytest.approx(ours_raw[1], rel=1e-6)  # the averages are not the raw weights
    assert with_ema.traces == 1 and raw.traces == 1  # one trace for every checkpoint


def test_tf_keras_fit_with_use_ema(tmp_path: Path) -> None:
    """tf_keras ModelCheckpoint(save_weights_only=True): root is the model, averages `Adam/average/...`."""
    saved = keras_layouts.train_tf_keras(tmp_path)
    model = KerasModel.build(Task(keras_layouts.tf_keras_model), device="cpu")
    raw = KerasModel.build(Task(keras_layouts.tf_keras_model), device="cpu", ema=False)
    for path in saved:
        tensors = by_full_name(path)
        ours = figures(model, path)
        assert ours[2].ema_source == "tf-keras" and ours[2].step is not None and ours[2].step > 0
        assert_close(ours[:2], numpy_figures(*(tensors[f"Adam/average/{n}"] for n in
                                              ("dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"))))
        assert_close(figures(raw, path)[:2], numpy_figures(*(tensors[n] for n in
                                                             ("dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"))))


def test_tf_train_exponential_moving_average(tmp_path: Path) -> None:
    """An eager tf.train.ExponentialMovingAverage tracked in the checkpoint; the step from a `step` variable."""
    saved = keras_layouts.train_tf_ema(tmp_path)
    model = KerasModel.build(Task(lambda: keras_model.build("functional")), device="cpu")
    for step, path in zip((20, 40, 60), saved):
        tensors = by_full_name(path)
        ours = figures(model, path)
        assert (ours[2].ema_source, ours[2].step) == ("tf-ema", step)
        names = [n for n in tensors if n.endswith("/ExponentialMovingAverage")]
        ordered = sorted(names, key=lambda n: (n.split("/")[0], n.split("/")[1] == "bias"))
        assert_close(ours[:2], numpy_figures(*(tensors[n] for n in ordered)))


def test_averages_for_only_some_variables_are_used_with_a_warning(tmp_path: Path) -> None:
    """Averages for the kernels only: those are used, the biases restore raw, and the outcome says why."""
    saved = keras_layouts.train_tf_ema(tmp_path, kernels_only=True)
    model = KerasModel.build(Task(lambda: keras_model.build("functional")), device="cpu")
    tensors = by_full_name(saved[-1])
    ours = figures(model, saved[-1])
    assert ours[2].ema_source == "tf-ema"
    assert ours[2].warnings == ("2 of the model's 4 trainable variables have no average in the checkpoint "
                                "(tf-ema layout); restored their raw values",)
    kernels = sorted(n for n in tensors if n.endswith("kernel/ExponentialMovingAverage"))
    biases = sorted(n for n in tensors if n.endswith("bias") and not n.startswith("save"))
    assert_close(ours[:2], numpy_figures(tensors[kernels[0]], tensors[biases[0]], tensors[kernels[1]], tensors[biases[1]]))


def test_the_forward_pass_is_traced_once_over_many_checkpoints(keras3_run: tuple[str, list[str]]) -> None:
    kind, saved = keras3_run
    if kind != "functional":
        pytest.skip("once is enough")
    model = KerasModel.build(Task(lambda: keras_model.build(kind)), device="cpu")
    for _ in range(10):
        for path in saved:
            figures(model, path)
    assert model.traces == 1  # 30 evaluations, one trace


def test_watch_once_finds_every_tf_keras_checkpoint_the_state_file_no_longer_lists(tmp_path: Path) -> None:
    """tf_keras ModelCheckpoint's state file lists only the newest: the others are found on disk."""
    from tests.conftest import read_rows, run_cli

    model_dir = tmp_path / "model"
    saved = keras_layouts.train_tf_keras(model_dir)
    assert (model_dir / "checkpoint").read_text().count("all_model_checkpoint_paths") == 1
    task = tmp_path / "task.py"
    task.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom tests import keras_layouts\n"
                    "import digits_data\n"
                    "class T:\n    def model(self): return keras_layouts.tf_keras_model()\n"
                    "    def validation_data(self): return digits_data.validation()\nTASK = T()\n")
    db = tmp_path / "e.db"
    result = run_cli("watch", str(model_dir), "--task", f"{task}:TASK", "--once", "--db", f"sqlite:///{db}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_rows(db)
    assert [r["checkpoint"] for r in rows] == [Path(p).name for p in saved]
    assert {(r["status"], r["ema_source"]) for r in rows} == {("ok", "tf-keras")}


def test_a_plain_tf_module(tmp_path: Path) -> None:
    saved = keras_layouts.train_module(tmp_path)
    model = KerasModel.build(Task(keras_layouts.ModuleNet), device="cpu")
    for step, path in zip((20, 40, 60), saved):
        reader = tf.train.load_checkpoint(path)
        get = lambda key: reader.get_tensor(f"model/{key}/.ATTRIBUTES/VARIABLE_VALUE")  # noqa: E731
        ours = figures(model, path)
        assert (ours[2].ema_source, ours[2].step) == ("none", step)  # step: the global_step variable
        assert_close(ours[:2], numpy_figures(get("hidden/w"), get("hidden/b"), get("out/w"), get("out/b")))


@pytest.mark.parametrize("file_format", ["weights.h5", "keras"])
def test_weight_files_from_fit(tmp_path: Path, file_format: str) -> None:
    """model.fit + ModelCheckpoint: each file loaded into the model, the epoch from the name."""
    saved = keras_train.train_fit(str(tmp_path), epochs=2, file_format=file_format)
    model = KerasModel.build(Task(lambda: keras_model.build("sequential")), device="cpu")
    for epoch, path in enumerate(saved, start=1):
        if file_format == "keras":
            with zipfile.ZipFile(path) as archive:
                weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")))
        else:
            weights = h5py.File(path)
        w1, b1 = (weights[f"layers/dense/vars/{i}"][()] for i in (0, 1))
        w2, b2 = (weights[f"layers/dense_1/vars/{i}"][()] for i in (0, 1))
        ours = figures(model, path)
        assert (ours[2].step, ours[2].ema_source) == (epoch, "none")
        assert_close(ours[:2], numpy_figures(w1, b1, w2, b2))


def test_another_architecture_fails_naming_the_variables(keras3_run: tuple[str, list[str]]) -> None:
    kind, saved = keras3_run
    if kind != "sequential":
        pytest.skip("once is enough")
    wider = KerasModel.build(Task(lambda: keras_model.build("sequential", hidden_units=16)), device="cpu")
    with pytest.raises(CheckpointError, match=r"does not fit the model: sequential\S*/dense\S*/kernel is \[64, 16\]"):
        figures(wider, saved[-1])
    import keras

    deeper = KerasModel.build(Task(lambda: keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(32), keras.layers.Dense(10)])), device="cpu")
    with pytest.raises(CheckpointError, match=r"checkpoint lacks 2 of the model's 6 variables: .*dense\S*/kernel"):
        figures(deeper, saved[-1])


def test_a_name_based_checkpoint_says_to_use_a_graph_task(trained_dir: Path) -> None:
    model = KerasModel.build(Task(lambda: keras_model.build("sequential")), device="cpu")
    with pytest.raises(CheckpointError, match="name-based checkpoint .* graph task"):
        figures(model, str(trained_dir / "model.ckpt-60"))


def test_the_log_says_what_a_tf2_task_waits_for(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    (tmp_path / "empty").mkdir()
    result = run_cli("watch", str(tmp_path / "empty"), "--task", "examples/keras/task.py:TASK", "--once",
                     "--db", f"sqlite:///{tmp_path / 'e.db'}", "--log-format", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (waiting,) = [e for e in events if e["event"] == "no checkpoints yet"]
    assert "*.weights.h5" in waiting["waiting_for"] and "checkpoint" in waiting["waiting_for"]


# -- metrics and several validation sets ------------------------------------------------------------

def numpy_logits(x: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    return np.maximum(x.astype(np.float64) @ w1 + b1, 0) @ w2 + b2


class MetricsTask(Task):
    """Two sets (numpy, and a Dataset of one-hot batches), a Keras metric and a function metric."""

    def metrics(self) -> dict[str, Any]:  # a method: fresh metric objects per build
        import keras

        return {"top3": keras.metrics.SparseTopKCategoricalAccuracy(k=3),
                "margin": lambda y, x: tf.reduce_max(x, axis=1) - tf.gather(x, y, axis=1, batch_dims=1),
                "recall:8": "recall:8"}

    def validation_data(self) -> dict[str, Any]:
        shifted = np.clip(X + 0.25, 0, 1).astype(np.float32)
        one_hot = np.eye(10, dtype=np.float32)[Y]
        return {"clean": (X, Y), "shifted": tf.data.Dataset.from_tensor_slices((shifted, one_hot)).batch(50)}


def test_several_sets_with_task_metrics_equal_numpy(keras3_run: tuple[str, list[str]]) -> None:
    """One restore, both sets, every metric: numpy over the checkpoint's averages agrees on each."""
    kind, saved = keras3_run
    if kind != "sequential":
        pytest.skip("once is enough")
    model = KerasModel.build(MetricsTask(lambda: keras_model.build(kind)), device="cpu", batch_size=97,
                             metrics=("top_k_accuracy:3",))
    _, averages = keras3_tensors(saved[-1])
    outcome = model.evaluate(checkpoints.at(str(Path(saved[-1]).parent), saved[-1]))  # type: ignore[arg-type]
    found = outcome.metrics
    assert list(found.values) == ["clean", "shifted"] and found.counts == {"clean": 360, "shifted": 360}
    for name, x in (("clean", X), ("shifted", np.clip(X + 0.25, 0, 1).astype(np.float32))):
        logits = numpy_logits(x, *averages)
        top3 = np.mean([label in np.argsort(-row)[:3] for row, label in zip(logits, Y)])
        eights = Y == 8
        expected = {
            "accuracy": np.mean(logits.argmax(axis=1) == Y),
            "top3": top3, "top_k_accuracy:3": top3,
            "margin": np.mean(logits.max(axis=1) - logits[np.arange(len(Y)), Y]),
            "recall:8": np.mean(logits[eights].argmax(axis=1) == 8),
        }
        for metric, value in expected.items():
            assert found.values[name][metric] == pytest.approx(value, abs=1e-5), (name, metric)
    assert found.accuracy == found.values["clean"]["accuracy"]  # the first set is the default one
    assert found.goals["top3"] == "max" and found.goals["loss"] == "min"
    assert model.traces == 1  # both sets have one input signature: one trace serves them


def test_a_regression_model(tmp_path: Path) -> None:
    """Float targets make a regression: loss is the MSE and mae comes with it; numpy agrees."""
    import keras

    rng = np.random.default_rng(3)
    x = rng.normal(size=(301, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1).astype(np.float32)

    def build() -> Any:
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])

    trained = build()
    trained.layers[0].kernel.assign(np.array([[1.1], [-1.9], [0.4], [3.2]], np.float32))
    path = tf.train.Checkpoint(model=trained).save(str(tmp_path / "ckpt"))

    class Regression(Task):
        def validation_data(self) -> tuple[np.ndarray, np.ndarray]:
            return x, y

    model = KerasModel.build(Regression(build), device="cpu", batch_size=64, metrics=("rmse",))
    outcome = model.evaluate(checkpoints.at(str(tmp_path), path))  # type: ignore[arg-type]
    kernel = trained.layers[0].kernel.numpy().astype(np.float64)
    error = (x.astype(np.float64) @ kernel)[:, 0] + trained.layers[0].bias.numpy()[0] - y
    assert model.sets.problem == "regression" and outcome.metrics.accuracy is None
    values = outcome.metrics.values["validation"]
    assert values["loss"] == pytest.approx(np.mean(error ** 2), rel=1e-5)
    assert values["mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)
    assert values["rmse"] == pytest.approx(np.sqrt(np.mean(error ** 2)), rel=1e-5)


# -- what the labels mean, decided at build with the model's output width ---------------------------

def five_targets(n: int = 203) -> tuple[np.ndarray, np.ndarray]:
    """The tf.train.Checkpoint guide's regression: x -> five float targets per example."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 5)) + np.arange(5.0)).astype(np.float32)
    return x, y


def dense_checkpoint(tmp_path: Path, units: int, seed: int = 4) -> tuple[Any, str, np.ndarray, np.ndarray]:
    """A Keras Dense(units) on 4 inputs, its weights set and saved: (factory, prefix, kernel, bias)."""
    import keras

    def build() -> Any:
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(units)])

    rng = np.random.default_rng(seed)
    kernel, bias = rng.normal(size=(4, units)).astype(np.float32), rng.normal(size=units).astype(np.float32)
    trained = build()
    trained.layers[0].kernel.assign(kernel)
    trained.layers[0].bias.assign(bias)
    return build, tf.train.Checkpoint(model=trained).save(str(tmp_path / "ckpt")), kernel, bias


class DataTask(Task):
    def __init__(self, factory: Any, value: Any, problem: str | None = None) -> None:
        super().__init__(factory)
        self.value = value
        if problem is not None:
            self.problem = problem

    def validation_data(self) -> Any:
        return self.value() if callable(self.value) else self.value


@pytest.mark.parametrize("dataset", [False, True])
def test_five_float_targets_are_a_regression_over_every_output(tmp_path: Path, dataset: bool) -> None:
    x, y = five_targets()
    build, path, kernel, bias = dense_checkpoint(tmp_path, 5)
    value = (lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(50)) if dataset else (x, y)
    model = KerasModel.build(DataTask(build, value), device="cpu", batch_size=64)
    outcome = model.evaluate(checkpoints.at(str(tmp_path), path))  # type: ignore[arg-type]
    error = x.astype(np.float64) @ kernel + bias - y
    assert model.sets.problem == "regression" and outcome.metrics.accuracy is None
    values = outcome.metrics.values["validation"]
    assert set(values) == {"loss", "mae"} and outcome.metrics.examples == len(y)
    assert values["loss"] == pytest.approx(np.mean(error ** 2), rel=1e-5)
    assert values["mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)


@pytest.mark.parametrize(("units", "labels", "message"), [
    (3, five_targets()[1], r"5 targets per example.*the model has 3 outputs"),
    (10, np.eye(12, dtype=np.float32)[np.arange(203) % 12], r"one-hot rows of 12 classes but the model has 10 outputs"),
    (10, np.eye(12, dtype=np.int64)[np.arange(203) % 12], r"one-hot rows of 12 classes but the model has 10 outputs"),
    (10, (np.arange(203) % 10 + 0.5).astype(np.float32), r"fractional values.*the model has 10 outputs"),
    (10, (np.arange(203) % 12).astype(np.float32), r"whole values 0\.\.11.*class indices 0\.\.9"),
])
def test_labels_that_do_not_fit_the_outputs_fail_at_build(tmp_path: Path, units: int, labels: np.ndarray,
                                                         message: str) -> None:
    build, _, _, _ = dense_checkpoint(tmp_path, units)
    with pytest.raises(TaskError, match=message):
        KerasModel.build(DataTask(build, (five_targets()[0], labels)), device="cpu")


@pytest.mark.parametrize("dataset", [False, True])
def test_float32_class_labels_are_class_indices(keras3_run: tuple[str, list[str]], dataset: bool) -> None:
    """y.astype("float32") with the digits network's 10 logits: classes, said once in the log."""
    from structlog.testing import capture_logs

    kind, saved = keras3_run
    if kind != "sequential":
        pytest.skip("once is enough")
    labels = Y.astype(np.float32)
    value = (lambda: tf.data.Dataset.from_tensor_slices((X, labels)).batch(50)) if dataset else (X, labels)
    with capture_logs() as logs:
        model = KerasModel.build(DataTask(lambda: keras_model.build(kind), value), device="cpu", batch_size=97)
    assert [e["event"] for e in logs if "class indices" in e["event"]] == [
        "labels are floats with whole values: taken as class indices; set the task's problem = 'regression' if "
        "they are targets"]
    _, averages = keras3_tensors(saved[-1])
    accuracy, loss, _ = figures(model, saved[-1])
    assert model.sets.problem == "classification"
    assert_close((accuracy, loss), numpy_figures(*averages))


def test_problem_regression_overrides_the_labels(tmp_path: Path) -> None:
    """One-hot rows with problem = "regression": five targets, the MSE against them."""
    x, _ = five_targets()
    one_hot = np.eye(5, dtype=np.float32)[np.arange(len(x)) % 5]
    build, path, kernel, bias = dense_checkpoint(tmp_path, 5)
    model = KerasModel.build(DataTask(build, (x, one_hot), "regression"), device="cpu")
    values = model.evaluate(checkpoints.at(str(tmp_path), path)).metrics.values["validation"]  # type: ignore[arg-type]
    error = x.astype(np.float64) @ kernel + bias - one_hot
    assert values["loss"] == pytest.approx(np.mean(error ** 2), rel=1e-5) and "accuracy" not in values
