"""model + validate: the evaluation model built once; its figures equal an independent computation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from evaluator import checkpoints
from evaluator.errors import DeviceError, EvaluationFault, TaskError
from evaluator.models.device import select_device
from evaluator.models.graph import GraphModel as EvalModel
from evaluator.task import load_task
from tests.conftest import DIGITS, DIGITS_TASK, train


def numpy_metrics(path: str, suffix: str) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of the digits network by hand, from the checkpoint's tensors."""
    import sys

    sys.path.insert(0, str(DIGITS))
    import digits_data

    reader = tf.train.load_checkpoint(path)
    w1, b1, w2, b2 = (reader.get_tensor(f"{name}{suffix}").astype(np.float64)
                      for name in ("layer1/weights", "layer1/biases", "layer2/weights", "layer2/biases"))
    images, labels = digits_data.validation()
    logits = np.maximum(images.astype(np.float64) @ w1 + b1, 0) @ w2 + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    accuracy = float(np.mean(logits.argmax(axis=1) == labels))
    loss = float(-log_softmax[np.arange(len(labels)), labels].mean())
    return accuracy, loss


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("accuracy") / "model"
    # Few steps and a slow average: EMA and raw weights still differ visibly.
    train(directory, steps=40, save_every=20, learning_rate=0.5, ema_decay=0.9)
    return directory


@pytest.mark.parametrize(("ema", "suffix"), [(True, "/ExponentialMovingAverage"), (False, "")])
def test_figures_equal_an_independent_computation(model_dir: Path, ema: bool, suffix: str) -> None:
    model = EvalModel.build(load_task(DIGITS_TASK), device="cpu", ema=ema, batch_size=100)
    for ckpt in checkpoints.read_state(str(model_dir)).checkpoints:
        outcome = model.evaluate(ckpt)
        accuracy, loss = numpy_metrics(ckpt.path, suffix)
        assert outcome.metrics.examples == 360
        assert outcome.metrics.accuracy == pytest.approx(accuracy, abs=1e-6)
        assert outcome.metrics.loss == pytest.approx(loss, rel=1e-5)
        assert outcome.ema_source == ("tf1-names" if ema else "none")


def test_ema_and_raw_weights_give_different_figures(model_dir: Path) -> None:
    ckpt = checkpoints.read_state(str(model_dir)).checkpoints[0]
    with_ema = EvalModel.build(load_task(DIGITS_TASK), device="cpu", ema=True).evaluate(ckpt).metrics
    raw = EvalModel.build(load_task(DIGITS_TASK), device="cpu", ema=False).evaluate(ckpt).metrics
    assert (with_ema.accuracy, with_ema.loss) != (raw.accuracy, raw.loss)
    assert numpy_metrics(ckpt.path, "/ExponentialMovingAverage") != numpy_metrics(ckpt.path, "")


def test_graph_is_built_once(trained_dir: Path) -> None:
    model = EvalModel.build(load_task(DIGITS_TASK), device="cpu")
    state = checkpoints.read_state(str(trained_dir))
    model.evaluate(state.checkpoints[0])
    operations = model.operations
    for ckpt in state.checkpoints * 5:
        model.evaluate(ckpt)
    assert model.operations == operations


def write_task(path: Path, body: str) -> str:
    path.write_text(
        "import numpy as np\nimport tensorflow as tf\nimport digits_model, digits_data\n"
        f"import sys; sys.path.insert(0, {str(DIGITS)!r})\n" + body
    )
    return f"{path}:TASK"


def digits_task_with(tmp_path: Path, validation: str) -> str:
    import sys

    sys.path.insert(0, str(DIGITS))
    return write_task(tmp_path / "task_variant.py",
                      "class T:\n    def inference(self, f): return digits_model.inference(f)\n"
                      f"    def validation_data(self):\n        {validation}\nTASK = T()\n")


def test_dataset_of_batches_gives_the_same_figures(tmp_path: Path, trained_dir: Path) -> None:
    spec = digits_task_with(
        tmp_path, "x, y = digits_data.validation(); return tf.data.Dataset.from_tensor_slices((x, y)).batch(50)")
    ckpt = checkpoints.read_state(str(trained_dir)).checkpoints[-1]
    from_dataset = EvalModel.build(load_task(spec), device="cpu").evaluate(ckpt).metrics
    from_arrays = EvalModel.build(load_task(DIGITS_TASK), device="cpu").evaluate(ckpt).metrics
    assert from_dataset.examples == from_arrays.examples == 360
    assert from_dataset.accuracy == pytest.approx(from_arrays.accuracy, abs=1e-9)
    assert from_dataset.loss == pytest.approx(from_arrays.loss, rel=1e-6)
    model = EvalModel.build(load_task(spec), device="cpu")
    first, second = model.evaluate(ckpt).metrics, model.evaluate(ckpt).metrics
    assert first.examples == second.examples == 360  # the iterator is re-initialized per checkpoint
    assert first.accuracy == second.accuracy


def test_one_hot_float64_labels_and_features(tmp_path: Path, trained_dir: Path) -> None:
    spec = digits_task_with(
        tmp_path, "x, y = digits_data.validation(); return x.astype(np.float64), np.eye(10)[y].astype(np.int32)")
    ckpt = checkpoints.read_state(str(trained_dir)).checkpoints[-1]
    one_hot = EvalModel.build(load_task(spec), device="cpu").evaluate(ckpt).metrics
    plain = EvalModel.build(load_task(DIGITS_TASK), device="cpu").evaluate(ckpt).metrics
    assert one_hot.accuracy == plain.accuracy


@pytest.mark.parametrize(("validation", "message"), [
    ("return 42", "must return \\(features, labels\\) numpy arrays or a tf.data.Dataset, not int"),
    ("return np.zeros((3, 64)), np.zeros(4, dtype=np.int64)", "3 features but 4 labels"),
    ("return np.zeros((0, 64)), np.zeros(0, dtype=np.int64)", "the validation set is empty"),
    ("return np.zeros((3, 64)), np.array([0.5, 1, 2])", "which makes this a regression"),
    ("raise OSError('validation shard not found')", "validation_data\\(\\) failed: OSError: validation shard not found"),
])
def test_bad_validation_data_is_a_task_error(tmp_path: Path, validation: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        EvalModel.build(load_task(digits_task_with(tmp_path, validation)), device="cpu")


def test_inference_that_fails_to_build(tmp_path: Path) -> None:
    spec = write_task(tmp_path / "bad_inference.py",
                      "class T:\n    def inference(self, f): return tf.matmul(f, tf.zeros([3, 3]))\n"
                      "    def validation_data(self): return digits_data.validation()\nTASK = T()\n")
    with pytest.raises(TaskError, match="inference\\(\\) failed to build the graph: ValueError"):
        EvalModel.build(load_task(spec), device="cpu")


def test_logits_of_the_wrong_rank(tmp_path: Path) -> None:
    spec = write_task(tmp_path / "rank.py",
                      "class T:\n    def inference(self, f): return tf.reduce_sum(digits_model.inference(f), axis=1)\n"
                      "    def validation_data(self): return digits_data.validation()\nTASK = T()\n")
    with pytest.raises(TaskError, match="logits of shape \\[batch, classes\\]"):
        EvalModel.build(load_task(spec), device="cpu")


def test_an_empty_dataset_is_a_fault_not_the_checkpoints(tmp_path: Path, trained_dir: Path) -> None:
    spec = digits_task_with(
        tmp_path, "x, y = digits_data.validation(); return tf.data.Dataset.from_tensor_slices((x, y)).take(0).batch(8)")
    model = EvalModel.build(load_task(spec), device="cpu")
    with pytest.raises(EvaluationFault, match="produced no examples"):
        model.evaluate(checkpoints.read_state(str(trained_dir)).checkpoints[-1])


def test_device_selection_on_this_machine() -> None:
    gpus = tf.config.list_physical_devices("GPU")
    assert select_device("cpu").name == "cpu"
    assert select_device("auto").name == ("gpu:0" if gpus else "cpu")
    if not gpus:
        with pytest.raises(DeviceError, match="--device gpu: TensorFlow sees no GPU"):
            select_device("gpu")
    with pytest.raises(DeviceError, match="choose one of auto, cpu, gpu"):
        select_device("tpu")


def digits_logits(path: str, suffix: str, images: np.ndarray) -> np.ndarray:
    reader = tf.train.load_checkpoint(path)
    w1, b1, w2, b2 = (reader.get_tensor(f"{name}{suffix}").astype(np.float64)
                      for name in ("layer1/weights", "layer1/biases", "layer2/weights", "layer2/biases"))
    return np.maximum(images.astype(np.float64) @ w1 + b1, 0) @ w2 + b2


def test_several_sets_and_task_metrics_equal_numpy(tmp_path: Path, model_dir: Path) -> None:
    """A graph task: a numpy set and a Dataset set of one-hot batches, a built-in, a per-example
    function and a tf.compat.v1.metrics streaming metric, all in one graph, one restore."""
    spec = write_task(tmp_path / "metrics_task.py", """
class T:
    metrics = {
        "top_k_accuracy:3": "top_k_accuracy:3",
        "margin": lambda y, x: tf.reduce_max(x, axis=1) - tf.gather(x, y, axis=1, batch_dims=1),
        "confidence": lambda y, x: tf.compat.v1.metrics.mean(tf.reduce_max(tf.nn.softmax(x), axis=1)),
    }
    def inference(self, f): return digits_model.inference(f)
    def validation_data(self):
        x, y = digits_data.validation()
        shifted = np.clip(x + 0.25, 0, 1).astype(np.float32)
        return {"clean": (x, y), "shifted": tf.data.Dataset.from_tensor_slices((shifted, np.eye(10)[y])).batch(50)}
TASK = T()
""")
    import sys

    sys.path.insert(0, str(DIGITS))
    import digits_data

    x, y = digits_data.validation()
    model = EvalModel.build(load_task(spec), device="cpu", batch_size=97)
    for ckpt in checkpoints.read_state(str(model_dir)).checkpoints:
        found = model.evaluate(ckpt).metrics
        assert found.counts == {"clean": 360, "shifted": 360}
        for name, images in (("clean", x), ("shifted", np.clip(x + 0.25, 0, 1))):
            logits = digits_logits(ckpt.path, "/ExponentialMovingAverage", images)
            shifted = logits - logits.max(axis=1, keepdims=True)
            probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
            expected = {
                "accuracy": np.mean(logits.argmax(axis=1) == y),
                "loss": -np.mean(np.log(probabilities[np.arange(len(y)), y])),
                "top_k_accuracy:3": np.mean([label in np.argsort(-row)[:3] for row, label in zip(logits, y)]),
                "margin": np.mean(logits.max(axis=1) - logits[np.arange(len(y)), y]),
                "confidence": np.mean(probabilities.max(axis=1)),
            }
            for metric, value in expected.items():
                assert found.values[name][metric] == pytest.approx(value, abs=1e-5), (ckpt.name, name, metric)
        assert found.goals == {"accuracy": "max", "loss": "min", "top_k_accuracy:3": "max", "margin": "max",
                               "confidence": "max"}


# -- what the labels mean, decided at build with the inference's output width ----------------------

def five_targets(n: int = 203) -> tuple[np.ndarray, np.ndarray]:
    """The tf.train.Checkpoint guide's regression: x -> five float targets per example."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 5)) + np.arange(5.0)).astype(np.float32)
    return x, y


def dense_checkpoint(directory: Path, units: int) -> tuple[str, np.ndarray, np.ndarray]:
    """A tf.compat.v1 dense layer's variables (`dense/kernel`, `dense/bias`) set and saved by a Saver."""
    rng = np.random.default_rng(4)
    kernel, bias = rng.normal(size=(4, units)).astype(np.float32), rng.normal(size=units).astype(np.float32)
    with tf.Graph().as_default():
        tf.compat.v1.get_variable("dense/kernel", initializer=kernel)
        tf.compat.v1.get_variable("dense/bias", initializer=bias)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            path = tf.compat.v1.train.Saver().save(session, str(directory / "model.ckpt"), global_step=7)
    return path, kernel, bias


class DenseTask:
    """A graph task: one dense layer of `units` outputs on 4 features."""

    def __init__(self, units: int, value: Any, problem: str | None = None) -> None:
        self.units = units
        self.value = value
        if problem is not None:
            self.problem = problem

    def inference(self, features: tf.Tensor) -> tf.Tensor:
        kernel = tf.compat.v1.get_variable("dense/kernel", shape=[4, self.units])
        bias = tf.compat.v1.get_variable("dense/bias", shape=[self.units])
        return tf.matmul(features, kernel) + bias

    def validation_data(self) -> Any:
        return self.value() if callable(self.value) else self.value


@pytest.mark.parametrize("dataset", [False, True])
def test_five_float_targets_are_a_regression_over_every_output(tmp_path: Path, dataset: bool) -> None:
    x, y = five_targets()
    path, kernel, bias = dense_checkpoint(tmp_path, 5)
    value = (lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(50)) if dataset else (x, y)
    model = EvalModel.build(DenseTask(5, value), device="cpu", batch_size=64)
    outcome = model.evaluate(checkpoints.at(str(tmp_path), path))  # type: ignore[arg-type]
    error = x.astype(np.float64) @ kernel + bias - y
    assert model.sets.problem == "regression" and outcome.metrics.accuracy is None
    values = outcome.metrics.values["validation"]
    assert set(values) == {"loss", "mae"} and outcome.metrics.examples == len(y)
    assert values["loss"] == pytest.approx(np.mean(error ** 2), rel=1e-5)
    assert values["mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)


@pytest.mark.parametrize(("units", "labels", "message"), [
    (3, five_targets()[1], r"5 targets per example.*inference\(\) has 3 outputs"),
    (10, np.eye(12, dtype=np.float32)[np.arange(203) % 12], r"one-hot rows of 12 classes but inference\(\) has 10 outputs"),
    (10, np.eye(12, dtype=np.int64)[np.arange(203) % 12], r"one-hot rows of 12 classes but inference\(\) has 10 outputs"),
    (10, (np.arange(203) % 10 + 0.5).astype(np.float32), r"fractional values.*inference\(\) has 10 outputs"),
    (10, (np.arange(203) % 12).astype(np.float32), r"whole values 0\.\.11.*class indices 0\.\.9"),
])
def test_labels_that_do_not_fit_the_outputs_fail_at_build(units: int, labels: np.ndarray, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        EvalModel.build(DenseTask(units, (five_targets()[0], labels)), device="cpu")


@pytest.mark.parametrize("dataset", [False, True])
def test_float32_class_labels_are_class_indices(tmp_path: Path, model_dir: Path, dataset: bool) -> None:
    """y.astype("float32") with the digits network's 10 logits: classes, said once in the log."""
    from structlog.testing import capture_logs

    validation = "x, y = digits_data.validation(); y = y.astype(np.float32); "
    validation += "return tf.data.Dataset.from_tensor_slices((x, y)).batch(50)" if dataset else "return x, y"
    with capture_logs() as logs:
        model = EvalModel.build(load_task(digits_task_with(tmp_path, validation)), device="cpu", batch_size=97)
    assert [e["event"] for e in logs if "class indices" in e["event"]] == [
        "labels are floats with whole values: taken as class indices; set the task's problem = 'regression' if "
        "they are targets"]
    assert model.sets.problem == "classification"
    for ckpt in checkpoints.read_state(str(model_dir)).checkpoints:
        found = model.evaluate(ckpt).metrics
        accuracy, loss = numpy_metrics(ckpt.path, "/ExponentialMovingAverage")
        assert found.accuracy == pytest.approx(accuracy, abs=1e-6) and found.loss == pytest.approx(loss, rel=1e-5)


def test_problem_regression_overrides_the_labels(tmp_path: Path) -> None:
    """One-hot rows with problem = "regression": five targets, the MSE against them."""
    x, _ = five_targets()
    one_hot = np.eye(5, dtype=np.float32)[np.arange(len(x)) % 5]
    path, kernel, bias = dense_checkpoint(tmp_path, 5)
    model = EvalModel.build(DenseTask(5, (x, one_hot), "regression"), device="cpu")
    values = model.evaluate(checkpoints.at(str(tmp_path), path)).metrics.values["validation"]  # type: ignore[arg-type]
    error = x.astype(np.float64) @ kernel + bias - one_hot
    assert values["loss"] == pytest.approx(np.mean(error ** 2), rel=1e-5) and "accuracy" not in values
