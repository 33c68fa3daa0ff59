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
