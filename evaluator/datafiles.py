"""Validation sets read from files (`--data`), for the no-code modes: `.npz` arrays and TFRecord
files of `tf.train.Example`.

Each file is read once into numpy (`features`, `labels`), which data.py then checks like any task's
numpy sets. TensorFlow is imported only to parse TFRecord files.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluator.errors import TaskError, first_line
from evaluator.nocode import DataFile, DataOptions, FeatureSpec

Arrays = tuple[np.ndarray, np.ndarray]


class DataReader:
    """The validation sets `--data` names, read once and kept (every checkpoint uses the same)."""

    def __init__(self, options: DataOptions) -> None:
        self.options = options
        self._sets: dict[str | None, Arrays] | None = None

    def sets(self) -> dict[str | None, Arrays]:
        """Set name (None: the one unnamed set) -> (features, labels)."""
        if self._sets is None:
            self._sets = {f.name: self._read(f) for f in self.options.files}
        return self._sets

    def validation_data(self, cast: Any = None) -> Arrays | dict[str, Arrays]:
        """What a task's validation_data() returns; `cast` (a numpy dtype) converts the features to
        the input's type (uint8 pixels for a float32 placeholder)."""
        sets = {name: (features if cast is None else features.astype(cast), labels)
                for name, (features, labels) in self.sets().items()}
        if not self.options.named:
            return sets[None]
        return {str(name): value for name, value in sets.items()}

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Where each set's features come from -> their shape per example (for messages)."""
        return {f.path: self.sets()[f.name][0].shape[1:] for f in self.options.files}

    def _read(self, data: DataFile) -> Arrays:
        if data.path.endswith(".npz"):
            return read_npz(data.path, self.options.keys)
        assert self.options.feature is not None and self.options.label is not None
        return read_tfrecord(data.path, self.options.feature, self.options.label)


def read_npz(path: str, keys: tuple[str, str]) -> Arrays:
    """The features and labels arrays (`keys`) of an .npz file."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # empty, truncated, not numpy at all (OSError, EOFError, ValueError, BadZipFile...)
        raise TaskError(f"--data {path} cannot be read as .npz: {type(err).__name__}: {first_line(err)}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a single .npy array
        raise TaskError(f"--data {path} is one array, not an .npz of features and labels (np.savez(path, x=..., y=...))")
    with archive:
        lacking = [key for key in keys if key not in archive.files]
        if lacking:
            raise TaskError(f"--data {path} has no array {lacking[0]!r} (it has {', '.join(archive.files) or 'none'}); "
                            "give --data-keys FEATURES,LABELS")
        try:
            return archive[keys[0]], archive[keys[1]]
        except Exception as err:  # a member that is not a readable array (garbled, or a pickle)
            raise TaskError(f"--data {path}: cannot read arrays {keys[0]!r} and {keys[1]!r}: {type(err).__name__}: "
                            f"{first_line(err)}") from err


def read_tfrecord(path: str, feature: FeatureSpec, label: str) -> Arrays:
    """`feature` and `label` of every tf.train.Example in a TFRecord file (GZIP if it ends in .gz)."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if path.endswith(".gz") else "")
    features: list[Any] = []
    labels: list[Any] = []
    size = int(np.prod(feature.shape)) if feature.shape else 1
    try:
        for index, record in enumerate(tf.compat.v1.io.tf_record_iterator(path, options=options)):
            example = tf.train.Example.FromString(record)
            values = _values(example, feature.name, path, index)
            if len(values) != size:
                raise TaskError(f"--data {path}: example {index} has {len(values)} values of {feature.name!r}, "
                                f"--feature says shape {list(feature.shape)} ({size})")
            features.append(values)
            target = _values(example, label, path, index)
            if len(target) != 1:
                raise TaskError(f"--data {path}: example {index} has {len(target)} values of label {label!r}, not one")
            labels.append(target[0])
    except TaskError:
        raise
    except Exception as err:  # a corrupt or non-TFRecord file
        raise TaskError(f"--data {path} cannot be read as TFRecord of tf.train.Example: {type(err).__name__}: "
                        f"{first_line(err)}") from err
    if not features:
        raise TaskError(f"--data {path} holds no examples")
    array = np.asarray(features).reshape((len(features), *feature.shape)).astype(feature.dtype)
    return array, np.asarray(labels)


def _values(example: Any, name: str, path: str, index: int) -> list[Any]:
    if name not in example.features.feature:
        have = ", ".join(sorted(example.features.feature)) or "none"
        raise TaskError(f"--data {path}: example {index} has no feature {name!r} (it has {have})")
    value = example.features.feature[name]
    kind = value.WhichOneof("kind")
    if kind == "bytes_list":
        raise TaskError(f"--data {path}: feature {name!r} holds bytes; give numbers (float_list or int64_list)")
    return list(getattr(value, kind).value) if kind else []
