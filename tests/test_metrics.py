"""metrics: every built-in metric equals scikit-learn's (or numpy's) on the same outputs, over a whole
set read in batches (a last batch smaller than the others), with imbalanced classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk

from evaluator import metrics
from evaluator.errors import CheckpointError, TaskError
from evaluator.metrics import CLASSIFICATION, REGRESSION, Problem

EXAMPLES = 1003
BATCH = 64  # 15 full batches and one of 43


def run(suite: metrics.Suite, labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """The suite over the whole set, batch by batch, the way both kinds of model drive it."""
    step = tf.function(lambda y, x: suite.statistics(y, x))
    totals = suite.totals()
    for start in range(0, len(labels), BATCH):
        batch = step(tf.constant(labels[start:start + BATCH]), tf.constant(outputs[start:start + BATCH]))
        totals.add({key: value.numpy() for key, value in batch.items()})
    assert totals.examples == len(labels)
    return totals.values()


def suite_of(names: list[str], problem: Problem) -> metrics.Suite:
    class Task:
        metrics = names

    return metrics.suite(Task(), problem, streaming_kind="keras")


def imbalanced(classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn with probabilities 1/2, 1/4... (imbalanced), logits that are informative."""
    rng = np.random.default_rng(seed)
    weights = 0.5 ** np.arange(classes)
    labels = rng.choice(classes, size=EXAMPLES, p=weights / weights.sum()).astype(np.int64)
    logits = rng.normal(0, 1.5, (EXAMPLES, classes)).astype(np.float32)
    logits[np.arange(EXAMPLES), labels] += 1.0
    return labels, logits


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def test_multiclass_metrics_equal_scikit_learn() -> None:
    labels, logits = imbalanced(6)
    names = ["top_k_accuracy:3", "precision", "recall", "f1", "precision:2", "recall:5", "f1:0", "auc", "auc:4"]
    values = run(suite_of(names, Problem(CLASSIFICATION, 6)), labels, logits)
    predicted = logits.argmax(axis=1)
    probabilities = softmax(logits)
    classes = list(range(6))
    expected = {
        "accuracy": sk.accuracy_score(labels, predicted),
        "loss": sk.log_loss(labels, probabilities, labels=classes),
        "top_k_accuracy:3": sk.top_k_accuracy_score(labels, logits, k=3, labels=classes),
        "precision": sk.precision_score(labels, predicted, average="macro", zero_division=0),
        "recall": sk.recall_score(labels, predicted, average="macro", zero_division=0),
        "f1": sk.f1_score(labels, predicted, average="macro", zero_division=0),
        "precision:2": sk.precision_score(labels, predicted, labels=[2], average=None, zero_division=0)[0],
        "recall:5": sk.recall_score(labels, predicted, labels=[5], average=None, zero_division=0)[0],
        "f1:0": sk.f1_score(labels, predicted, labels=[0], average=None, zero_division=0)[0],
        "auc": sk.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"),
        "auc:4": sk.roc_auc_score(labels == 4, probabilities[:, 4]),
    }
    assert np.bincount(labels).max() > 20 * np.bincount(labels).min()  # imbalanced indeed
    assert set(values) == set(expected)
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.parametrize("width", [1, 2])
def test_binary_metrics_equal_scikit_learn(width: int) -> None:
    """Two classes, as two logits or as one (sigmoid): the positive class is 1."""
    rng = np.random.default_rng(1)
    labels = (rng.random(EXAMPLES) < 0.2).astype(np.int64)
    margin = rng.normal(0, 1, EXAMPLES) + 1.2 * labels - 0.5
    logits = (margin[:, None] if width == 1 else np.stack([np.zeros(EXAMPLES), margin], axis=1)).astype(np.float32)
    values = run(suite_of(["precision", "recall", "f1", "auc", "recall:0"], Problem(CLASSIFICATION, width)),
                 labels, logits)
    margin32 = logits[:, -1].astype(np.float64) - (logits[:, 0] if width == 2 else 0)
    predicted = (margin32 > 0).astype(np.int64)
    p1 = 1 / (1 + np.exp(-margin32))
    expected = {
        "accuracy": sk.accuracy_score(labels, predicted),
        "loss": sk.log_loss(labels, np.stack([1 - p1, p1], axis=1)),
        "precision": sk.precision_score(labels, predicted),
        "recall": sk.recall_score(labels, predicted),
        "f1": sk.f1_score(labels, predicted),
        "auc": sk.roc_auc_score(labels, margin32),
        "recall:0": sk.recall_score(labels, predicted, pos_label=0),
    }
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, abs=1e-6), name


def test_regression_metrics_equal_numpy() -> None:
    rng = np.random.default_rng(2)
    targets = rng.normal(3, 2, EXAMPLES).astype(np.float32)
    predictions = (targets + rng.normal(0, 0.7, EXAMPLES)).astype(np.float32)[:, None]  # [batch, 1]
    suite = suite_of(["mse", "rmse"], Problem(REGRESSION))
    assert suite.names == ["loss", "mae", "mse", "rmse"]  # the regression defaults first
    values = run(suite, targets, predictions)
    error = predictions[:, 0].astype(np.float64) - targets
    assert values["loss"] == pytest.approx(np.mean(error ** 2), abs=1e-6)
    assert values["mse"] == pytest.approx(sk.mean_squared_error(targets, predictions[:, 0]), abs=1e-5)
    assert values["mae"] == pytest.approx(sk.mean_absolute_error(targets, predictions[:, 0]), abs=1e-6)
    assert values["rmse"] == pytest.approx(math.sqrt(np.mean(error ** 2)), abs=1e-6)
    assert suite.goals == {"loss": "min", "mae": "min", "mse": "min", "rmse": "min"}


def test_a_function_metric_is_averaged_over_examples_not_batches() -> None:
    """A per-example function over 1003 examples in batches of 64: the mean of all 1003 values."""
    labels, logits = imbalanced(4)

    class Task:
        metrics = {"margin": lambda y, x: tf.reduce_max(x, axis=1) - tf.gather(x, y, axis=1, batch_dims=1),
                   "hit_loss": (lambda y, x: tf.cast(tf.argmax(x, axis=1) == y, tf.float32), "max")}

    suite = metrics.suite(Task(), Problem(CLASSIFICATION, 4), streaming_kind="keras")
    values = run(suite, labels, logits)
    margin = logits.max(axis=1).astype(np.float64) - logits[np.arange(EXAMPLES), labels]
    assert values["margin"] == pytest.approx(margin.mean(), abs=1e-6)
    batch_means = [margin[i:i + BATCH].mean() for i in range(0, EXAMPLES, BATCH)]
    assert abs(np.mean(batch_means) - margin.mean()) > 1e-4  # the wrong answer differs visibly
    assert suite.goals["margin"] == "max" and suite.goals["hit_loss"] == "max"  # given wins over the name


def test_ties_are_counted_half_in_auc() -> None:
    scores = np.array([0.1, 0.5, 0.5, 0.5, 0.9, 0.9])
    positive = np.array([False, True, False, True, False, True])
    assert metrics.roc_auc(scores, positive) == pytest.approx(sk.roc_auc_score(positive, scores))
    assert math.isnan(metrics.roc_auc(scores, np.zeros(6, dtype=bool)))


def test_goals_and_defaults() -> None:
    suite = suite_of(["top_k_accuracy:2", "auc"], Problem(CLASSIFICATION, 3))
    assert suite.goals == {"accuracy": "max", "loss": "min", "top_k_accuracy:2": "max", "auc": "max"}
    assert metrics.guess_goal("val_error_rate") == "min" and metrics.guess_goal("iou") == "max"


@pytest.mark.parametrize(("names", "problem", "message"), [
    (["nonsense"], Problem(CLASSIFICATION, 3), "unknown metric 'nonsense'"),
    (["top_k_accuracy"], Problem(CLASSIFICATION, 3), "top_k_accuracy needs K >= 1"),
    (["recall:7"], Problem(CLASSIFICATION, 3), "recall:7: the model has classes 0..2"),
    (["mae"], Problem(CLASSIFICATION, 3), "does not apply to a classification task"),
    (["accuracy"], Problem(REGRESSION), "does not apply to a regression task"),
    (["auc:x"], Problem(CLASSIFICATION, 3), "must be a whole number"),
])
def test_bad_metric_names_say_what_exists(names: list[str], problem: Problem, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        suite_of(names, problem)


def test_a_function_returning_a_scalar_is_refused() -> None:
    class Task:
        metrics = {"mean": lambda y, x: tf.reduce_mean(x)}

    suite = metrics.suite(Task(), Problem(CLASSIFICATION, 3), streaming_kind="keras")
    with pytest.raises(TaskError, match="returns one value per example"):
        suite.statistics(tf.constant([0, 1], tf.int64), tf.zeros([2, 3]))


def test_settle_drops_undefined_values_and_fails_on_a_non_finite_loss() -> None:
    kept, warnings = metrics.settle({"a": {"loss": 0.5, "auc": math.nan}})
    assert kept == {"a": {"loss": 0.5}} and "auc undefined on 'a'" in warnings[0]
    with pytest.raises(CheckpointError, match="loss is not finite"):
        metrics.settle({"a": {"loss": math.inf}})


def test_several_targets_per_example_are_averaged_over_every_output() -> None:
    """[N, 5] targets against 5 outputs: the loss is the MSE over all N x 5 values; examples count rows."""
    rng = np.random.default_rng(5)
    targets = rng.normal(1, 2, (EXAMPLES, 5)).astype(np.float32)
    predictions = (targets + rng.normal(0, 0.5, (EXAMPLES, 5))).astype(np.float32)
    values = run(suite_of(["mse", "rmse"], Problem(REGRESSION)), targets, predictions)
    assert values["loss"] == pytest.approx(sk.mean_squared_error(targets, predictions), abs=1e-6)
    assert values["mse"] == pytest.approx(sk.mean_squared_error(targets, predictions), abs=1e-6)
    assert values["mae"] == pytest.approx(sk.mean_absolute_error(targets, predictions), abs=1e-6)
    assert values["rmse"] == pytest.approx(math.sqrt(sk.mean_squared_error(targets, predictions)), abs=1e-6)


def test_class_labels_given_as_floats_are_class_indices() -> None:
    labels, logits = imbalanced(5)
    names = ["top_k_accuracy:2", "f1", "auc"]
    as_floats = run(suite_of(names, Problem(CLASSIFICATION, 5)), labels.astype(np.float32), logits)
    assert as_floats == run(suite_of(names, Problem(CLASSIFICATION, 5)), labels, logits)
