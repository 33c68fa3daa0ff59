"""No code: `watch` options that stand in for a task file, turned into a task.

Three kinds of model directory are evaluated without a line of Python:

- `--meta-graph`: TF1 checkpoints saved by `tf.compat.v1.train.Saver` (with their `.meta`): the
  graph is imported once from the first checkpoint's `.meta`, `--input` mapped onto the validation
  features, `--output` evaluated (models/imported.py: a graph task; restore, EMA and the whole
  service path unchanged);
- `--savedmodel`: a directory of numbered SavedModel versions (TF Serving's layout), one row per
  version, or one SavedModel directory (models/artifact.py, sources/artifacts.py);
- `--frozen-graph`: a directory of frozen GraphDef `.pb` files, one row per file (same modules).

`--data` gives the validation sets (datafiles.py). This module parses and checks the options and
imports no TensorFlow; `task()` builds the task, importing what needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from evaluator.errors import ConfigError

META_GRAPH, SAVEDMODEL, FROZEN = "meta-graph", "savedmodel", "frozen-graph"
MODES = (META_GRAPH, SAVEDMODEL, FROZEN)
DEFAULT_SIGNATURE = "serving_default"
#: The dtypes a TFRecord feature may be declared with (--feature NAME:SHAPE:DTYPE).
FEATURE_DTYPES = ("float32", "float64", "int64", "int32", "uint8")


@dataclass(frozen=True)
class FeatureSpec:
    """A `tf.train.Example` feature read as the model's input: its name, per-example shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def parse(cls, text: str) -> FeatureSpec:
        """`NAME:SHAPE:DTYPE`, SHAPE comma-separated (`image:28,28:float32`, `pixels:64:float32`;
        an empty SHAPE is one value per example)."""
        parts = text.split(":")
        if len(parts) != 3 or not parts[0]:
            raise ConfigError(f"--feature {text!r} is not NAME:SHAPE:DTYPE (e.g. pixels:64:float32, "
                              "image:28,28:float32)")
        name, shape_text, dtype = parts
        dims = [d.strip() for d in shape_text.split(",") if d.strip()]
        if not all(d.isascii() and d.isdigit() and int(d) > 0 for d in dims):
            raise ConfigError(f"--feature {text!r}: SHAPE must be positive whole numbers separated by commas")
        shape = tuple(int(d) for d in dims)
        if dtype not in FEATURE_DTYPES:
            raise ConfigError(f"--feature {text!r}: DTYPE must be one of {', '.join(FEATURE_DTYPES)}")
        return cls(name, shape, dtype)


@dataclass(frozen=True)
class DataFile:
    """One validation set: its name (None for the one unnamed set) and its file."""

    name: str | None
    path: str


@dataclass(frozen=True)
class DataOptions:
    """How to read `--data` files: npz arrays (`keys`), or TFRecord features (`feature`, `label`)."""

    files: tuple[DataFile, ...]
    #: The npz arrays holding the features and the labels.
    keys: tuple[str, str] = ("x", "y")
    feature: FeatureSpec | None = None
    label: str | None = None

    @property
    def named(self) -> bool:
        return any(f.name is not None for f in self.files)


@dataclass(frozen=True)
class NoCode:
    """What the no-code options ask for (instead of --task)."""

    mode: str
    data: DataOptions
    #: --meta-graph and --frozen-graph: the tensors fed and evaluated (`op:0`).
    input_name: str | None = None
    output_name: str | None = None
    #: --savedmodel: the signature and its output key (None: the only output).
    signature: str = DEFAULT_SIGNATURE
    output_key: str | None = None

    @property
    def restores_averages(self) -> bool:
        """Whether --ema applies: checkpoints hold averages, exports hold the weights they were given."""
        return self.mode == META_GRAPH

    def describe(self) -> str:
        """What stands for the task in logs and in each row's settings."""
        parts = [f"--{self.mode}"]
        if self.mode == SAVEDMODEL:
            parts.append(f"--signature {self.signature}")
            if self.output_key:
                parts.append(f"--output {self.output_key}")
        else:
            parts += [f"--input {self.input_name}", f"--output {self.output_name}"]
        parts += [f"--data {f.name + '=' if f.name else ''}{f.path}" for f in self.data.files]
        return " ".join(parts)


def parse(*, meta_graph: bool, savedmodel: bool, frozen_graph: bool, input_name: str | None,
          output_name: str | None, signature: str | None, data: tuple[str, ...], data_keys: str | None,
          feature: str | None, label: str | None, task: str | None, locations: int, roots: int) -> NoCode | None:
    """The no-code request the options make, or None for a --task run; ConfigError for what can't work
    (checked before anything is built or the database touched)."""
    modes = [mode for mode, given in ((META_GRAPH, meta_graph), (SAVEDMODEL, savedmodel), (FROZEN, frozen_graph))
             if given]
    nocode_given = [name for name, value in (("--input", input_name), ("--output", output_name),
                                             ("--signature", signature), ("--data", data),
                                             ("--data-keys", data_keys), ("--feature", feature),
                                             ("--label", label)) if value]
    if not modes:
        if nocode_given:
            raise ConfigError(f"{nocode_given[0]} is for the no-code modes: add --meta-graph, --savedmodel or "
                              "--frozen-graph (or drop it and give --task)")
        if not task:
            raise ConfigError("give --task SPEC (the model and data in Python), or a no-code mode: --meta-graph, "
                              "--savedmodel or --frozen-graph with --data FILE")
        return None
    if len(modes) > 1:
        raise ConfigError(f"--{modes[0]} and --{modes[1]} exclude each other: choose one")
    mode = modes[0]
    if task:
        raise ConfigError(f"--task and --{mode} exclude each other: --{mode} builds the task from the model "
                          "directory and --data")
    if roots or locations != 1:
        raise ConfigError(f"--{mode} evaluates one model directory: give exactly one (no --root)")
    if not data:
        raise ConfigError(f"--{mode} needs the validation data: --data FILE (.npz, or TFRecord with --feature "
                          "and --label)")
    if mode == SAVEDMODEL:
        if input_name:
            raise ConfigError("--input is for --meta-graph and --frozen-graph: a SavedModel's signature names "
                              "its input")
    else:
        if signature:
            raise ConfigError(f"--signature is for --savedmodel, not --{mode}")
        missing = [name for name, value in (("--input", input_name), ("--output", output_name)) if not value]
        if missing:
            raise ConfigError(f"--{mode} needs {' and '.join(missing)}: the tensor names of the input and "
                              "the logits (e.g. --input x-input:0 --output layer2/add:0)")
    return NoCode(mode=mode, data=_data_options(data, data_keys, feature, label),
                  input_name=_tensor(input_name) if mode != SAVEDMODEL else None,
                  output_name=_tensor(output_name) if mode != SAVEDMODEL else None,
                  signature=signature or DEFAULT_SIGNATURE,
                  output_key=output_name if mode == SAVEDMODEL else None)


def _tensor(name: str | None) -> str | None:
    """A tensor name as the graph spells it: `op` means output 0 (`op:0`)."""
    if name is None:
        return None
    op, sep, index = name.rpartition(":")
    return name if sep and op and index.isascii() and index.isdigit() else f"{name}:0"


def _data_options(values: tuple[str, ...], keys: str | None, feature: str | None, label: str | None) -> DataOptions:
    files = tuple(_data_file(value) for value in values)
    names = [f.name for f in files]
    if len(files) > 1 and None in names:
        raise ConfigError("several --data make named validation sets: give each as NAME=FILE "
                          "(e.g. --data clean=valid.npz --data noisy=noisy.npz)")
    if len(set(names)) < len(names):
        raise ConfigError(f"--data: the set names repeat ({', '.join(n or '' for n in names)}): give each its own")
    for f in files:
        if not os.path.isfile(f.path):
            raise ConfigError(f"--data: file {f.path} does not exist")
    tfrecords = [f.path for f in files if not f.path.endswith(".npz")]
    if tfrecords and (feature is None or label is None):
        raise ConfigError(f"--data {tfrecords[0]}: a TFRecord file of tf.train.Example needs --feature NAME:SHAPE:DTYPE "
                          "and --label NAME (an .npz needs neither)")
    parsed_keys = ("x", "y")
    if keys is not None:
        split = tuple(k.strip() for k in keys.split(","))
        if len(split) != 2 or not all(split):
            raise ConfigError(f"--data-keys {keys!r} is not FEATURES,LABELS (e.g. images,labels)")
        parsed_keys = (split[0], split[1])
    return DataOptions(files=files, keys=parsed_keys, feature=FeatureSpec.parse(feature) if feature else None,
                       label=label)


def _data_file(value: str) -> DataFile:
    """`FILE` or `NAME=FILE` (a NAME has no '/' or '.': a path with '=' in it stays a path)."""
    name, sep, path = value.partition("=")
    if sep and name and "/" not in name and "." not in name:
        return DataFile(name, os.path.abspath(path))
    return DataFile(None, os.path.abspath(value))


def first_meta(model_dir: str) -> str | None:
    """The `.meta` of the model directory's first complete checkpoint (oldest step), or None. A Saver
    writes the `.meta` last (atomically), so one that is there belongs to a checkpoint written."""
    from evaluator import checkpoints

    try:
        names = [n[: -len(".meta")] for n in os.listdir(model_dir) if n.endswith(".meta")]
    except OSError:
        return None
    found = [c for c in (checkpoints.at(model_dir, n) for n in names) if c is not None and checkpoints.exists(c.path)]
    if not found:
        return None
    first = min(found, key=checkpoints.by_step)
    return first.path + ".meta"


#: What the model is built from, as the log says while waiting for it.
WAITING_FOR = {META_GRAPH: "the first checkpoint's .meta", SAVEDMODEL: "the first SavedModel version",
               FROZEN: "the first frozen graph (.pb)"}


def first(request: NoCode, location: str) -> str | None:
    """What the model is built from: the first checkpoint's `.meta`, or the first export; None yet."""
    if request.mode == META_GRAPH:
        return first_meta(location)
    from evaluator.sources.artifacts import ArtifactDirectory

    source = ArtifactDirectory(location, request.mode)
    found = [c for c in source.listed().checkpoints if source.complete(c)]
    return found[0].path if found else None


def nothing_yet(request: NoCode, location: str) -> str:
    """The error of `--once` where there is nothing to build the model from."""
    if request.mode == META_GRAPH:
        return (f"--meta-graph: no checkpoint with a .meta file in {location} (tf.compat.v1.train.Saver writes "
                "one beside each checkpoint)")
    if request.mode == SAVEDMODEL:
        return (f"--savedmodel: no SavedModel in {location} (a saved_model.pb there, or in numbered version "
                "directories 1/, 2/, ...)")
    return f"--frozen-graph: no .pb file in {location}"


def task(request: NoCode, first_path: str) -> Any:
    """The task the request stands for (imports TensorFlow): a graph task for --meta-graph (from the
    `.meta` at `first_path`), an artifact task for --savedmodel and --frozen-graph (its first export)."""
    from evaluator.datafiles import DataReader

    reader = DataReader(request.data)
    if request.mode == META_GRAPH:
        from evaluator.models.imported import MetaGraphTask

        assert request.input_name and request.output_name
        return MetaGraphTask(first_path, request.input_name, request.output_name, reader)
    from evaluator.models.artifact import ArtifactTask

    return ArtifactTask(request, reader, first_path)
