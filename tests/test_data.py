"""data: what validation_data() may return, one set or several, classification or regression."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from evaluator import data
from evaluator.errors import TaskError

X = np.zeros((6, 3), np.float64)


def test_one_set_is_named_validation_and_float64_features_become_float32() -> None:
    sets = data.read((X, np.arange(6)))
    assert (sets.names, sets.named, sets.problem) == (["validation"], False, "classification")
    features, labels = sets.sets[0].arrays  # type: ignore[misc]
    assert features.dtype == np.float32 and labels.dtype == np.int64 and sets.sets[0].size == 6


def test_several_sets_keep_the_task_order_and_normalize_labels() -> None:
    one_hot = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    sets = data.read({"b": (X, one_hot), "a": tf.data.Dataset.from_tensor_slices((X, one_hot)).batch(4)})
    assert sets.names == ["b", "a"] and sets.named and sets.problem == "classification"
    assert list(sets.sets[0].arrays[1]) == [0, 1, 2, 0, 1, 2]  # type: ignore[index]
    batches = [labels.numpy().tolist() for _, labels in sets.sets[1].dataset]  # type: ignore[union-attr]
    assert batches == [[0, 1, 2, 0], [1, 2]] and sets.sets[1].size is None


@pytest.mark.parametrize("labels", [np.linspace(0, 1, 6), np.linspace(0, 1, 6)[:, None].astype(np.float32)])
def test_float_targets_one_per_example_are_a_regression(labels: np.ndarray) -> None:
    sets = data.read((X, labels))
    assert sets.problem == "regression" and sets.sets[0].arrays[1].shape == (6,)  # type: ignore[index]


def test_the_task_can_say_what_the_problem_is() -> None:
    assert data.read((X, np.arange(6.0)), "classification").sets[0].arrays[1].dtype == np.int64  # type: ignore[index]
    assert data.read((X, np.arange(6)), "regression").problem == "regression"


@pytest.mark.parametrize(("value", "message"), [
    ({}, "empty mapping"),
    ({"a/b": (X, np.arange(6))}, "without '/'"),
    ({"a": (X, np.arange(6)), "b": (X, np.linspace(0, 1, 6))}, "disagree on the problem"),
    ({"a": 42}, r"validation_data\(\)\['a'\] must be"),
    ((X, np.arange(5)), "6 features but 5 labels"),
    ((X, np.array([0.5, 1.5, 2, 3, 4, 5])), None),  # floats: a regression, not an error
])
def test_what_is_refused_says_why(value: Any, message: str | None) -> None:
    if message is None:
        assert data.read(value).problem == "regression"
        return
    with pytest.raises(TaskError, match=message):
        data.read(value)


def test_an_unknown_problem_is_refused() -> None:
    class Task:
        problem = "ranking"

        def validation_data(self) -> Any:
            return X, np.arange(6)

    with pytest.raises(TaskError, match="use 'classification' or 'regression'"):
        data.load(Task())


# -- what the labels mean, given the model's output width (settle) ----------------------------------

RNG = np.random.default_rng(17)
TARGETS = RNG.normal(size=(6, 5)).astype(np.float32)  # [N, 5] floats, not one-hot: five targets each
FLOAT_CLASSES = np.array([0, 3, 9, 1, 1, 7], np.float32)  # y.astype("float32"), as the keras-io guides do


def settle(value: Any, width: int, declared: str | None = None) -> data.ValidationSets:
    return data.settle(data.read(value, declared), tf.TensorShape([None, width]), tf.float32, "the model")


@pytest.mark.parametrize("dataset", [False, True])
def test_float_rows_that_are_not_one_hot_are_several_targets(dataset: bool) -> None:
    value = tf.data.Dataset.from_tensor_slices((X, TARGETS)).batch(4) if dataset else (X, TARGETS)
    sets = settle(value, 5)
    assert sets.problem == "regression" and sets.targets == 5
    assert sets.sets[0].label_spec.shape.as_list() == [None, 5]
    if dataset:
        assert np.array_equal(np.concatenate([y.numpy() for _, y in sets.sets[0].dataset]), TARGETS)  # type: ignore[union-attr]
    else:
        assert np.array_equal(sets.sets[0].arrays[1], TARGETS)  # type: ignore[index]


@pytest.mark.parametrize("dataset", [False, True])
def test_targets_and_outputs_of_different_widths_are_refused(dataset: bool) -> None:
    value = tf.data.Dataset.from_tensor_slices((X, TARGETS)).batch(4) if dataset else (X, TARGETS)
    with pytest.raises(TaskError, match=r"5 targets per example.*the model has 3 outputs"):
        settle(value, 3)


@pytest.mark.parametrize("dataset", [False, True])
def test_one_hot_rows_wider_than_the_logits_are_refused(dataset: bool) -> None:
    one_hot = np.eye(12, dtype=np.float32)[[0, 11, 3, 4, 5, 6]]
    value = tf.data.Dataset.from_tensor_slices((X, one_hot)).batch(4) if dataset else (X, one_hot)
    assert settle(value, 12).problem == "classification"
    with pytest.raises(TaskError, match=r"one-hot rows of 12 classes but the model has 10 outputs"):
        settle(value, 10)


@pytest.mark.parametrize("dataset", [False, True])
def test_float_labels_with_whole_values_are_classes_for_a_model_with_several_outputs(dataset: bool) -> None:
    from structlog.testing import capture_logs

    value = tf.data.Dataset.from_tensor_slices((X, FLOAT_CLASSES)).batch(4) if dataset else (X, FLOAT_CLASSES)
    with capture_logs() as logs:
        sets = settle({"a": value, "b": (X, FLOAT_CLASSES)}, 10)
    assert sets.problem == "classification"
    assert [e["event"] for e in logs] == ["labels are floats with whole values: taken as class indices; set the "
                                         "task's problem = 'regression' if they are targets"]
    with capture_logs() as logs:
        assert settle(value, 1).problem == "regression"  # one output: a regression, as before
    assert logs == []


@pytest.mark.parametrize(("labels", "message"), [
    (FLOAT_CLASSES + 0.5, r"fractional values.*one target per example.*the model has 10 outputs"),
    (FLOAT_CLASSES + 3, r"whole values 3\.\.12.*the model has 10 outputs.*class indices 0\.\.9"),
    (-FLOAT_CLASSES, r"whole values -9\.\.0.*class indices 0\.\.9"),
])
def test_float_labels_that_cannot_be_classes_of_several_outputs_are_refused(labels: np.ndarray, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        settle((X, labels), 10)


def test_problem_regression_overrides_whole_float_labels_and_one_hot_rows() -> None:
    one_hot = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 0]]
    sets = settle((X, one_hot), 5, "regression")
    assert (sets.problem, sets.targets) == ("regression", 5) and sets.sets[0].arrays[1].shape == (6, 5)  # type: ignore[index]
    with pytest.raises(TaskError, match="1 target per example.*the model has 10 outputs"):
        settle((X, FLOAT_CLASSES), 10, "regression")
