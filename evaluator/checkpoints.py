"""The model directory's `checkpoint` state file: which checkpoints it lists, their names and steps.

TensorFlow is imported only inside `read_state` (its parser), so importing this module is cheap.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from evaluator.errors import StateFileError, first_line
from evaluator.evaluation import MAX_STEP

#: The state file TensorFlow's Saver and CheckpointManager keep in the model directory.
STATE_FILE = "checkpoint"
#: A checkpoint's index file is `<prefix>.index`; TensorFlow moves it into place just before the state file.
INDEX_SUFFIX = ".index"
#: The default name of EMA shadow variables: `<variable>/ExponentialMovingAverage`.
EMA_NAME = "ExponentialMovingAverage"

_STEP_SUFFIX = re.compile(r"-(\d+)$")
#: Keras 3 weight files (`model.save_weights`, `ModelCheckpoint`): each file is one checkpoint.
WEIGHT_SUFFIXES = (".weights.h5", ".keras")
#: The step or epoch in a weight file's name: after `epoch`/`step`, else the first number after a separator.
_FILE_STEP = (re.compile(r"(?:epoch|step)[^0-9a-z]*(\d+)", re.IGNORECASE), re.compile(r"(?:^|[._-])(\d+)"))


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint listed in the state file."""

    #: The prefix relative to the model directory: the key of its row.
    name: str
    #: The absolute prefix to restore from.
    path: str
    #: The step in the name's `-N` suffix, if any (the restored `global_step` takes precedence).
    name_step: int | None

    @property
    def is_weight_file(self) -> bool:
        """A Keras weight file (`*.weights.h5`, `*.keras`) rather than a TensorFlow checkpoint prefix."""
        return is_weight_file(self.name)


@dataclass(frozen=True)
class State:
    """What one read of the state file found."""

    #: Listed checkpoints inside the model directory, oldest step first.
    checkpoints: list[Checkpoint] = field(default_factory=list)
    #: Listed paths that were ignored (outside the model directory, or not a usable prefix).
    ignored: list[str] = field(default_factory=list)


def normalize_model_dir(path: str | os.PathLike[str]) -> str:
    """The canonical form of a model directory, as stored in every row: absolute, symlinks resolved."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def make_dirs(directory: str, model_dir: str) -> None:
    """os.makedirs, except that within `model_dir` each level is made with mkdir from the model
    directory down: FileNotFoundError once the model directory is gone, so the evaluator's outputs
    and pins never bring back a model directory that training or its user removed."""
    relative = os.path.relpath(directory, model_dir)
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep) or os.path.isabs(relative):
        os.makedirs(directory, exist_ok=True)
        return
    path = model_dir
    for part in relative.split(os.sep):
        path = os.path.join(path, part)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def step_from_name(name: str) -> int | None:
    """The `-N` suffix of a checkpoint prefix (`model.ckpt-1200` -> 1200), or a weight file's epoch
    or step (`model.05.weights.h5` -> 5, `ckpt-epoch-3.keras` -> 3); None without one (also for a
    number too large for a 64-bit step)."""
    base = os.path.basename(name)
    if is_weight_file(base):
        stem = base[: -len(next(s for s in WEIGHT_SUFFIXES if base.endswith(s)))]
        match = _FILE_STEP[0].search(stem) or _FILE_STEP[1].search(stem)
    else:
        match = _STEP_SUFFIX.search(base)
    if not match or len(match.group(1)) > 19:
        return None
    step = int(match.group(1))
    return step if step <= MAX_STEP else None


def family(name: str) -> str:
    """The name without its `-N` suffix: the checkpoints one saver writes share it (`model.ckpt`)."""
    return _STEP_SUFFIX.sub("", name)


def at(model_dir: str, path: str) -> Checkpoint | None:
    """The Checkpoint for prefix `path` (absolute, or relative to the model directory), if inside it."""
    return _at(normalize_model_dir(model_dir), path)


def _at(root: str, path: str) -> Checkpoint | None:
    """`at` for a root already normalized (a scan or a state file names thousands)."""
    name = _relative_name(root, path)
    if name is None:
        return None
    return Checkpoint(name=name, path=os.path.join(root, name), name_step=step_from_name(name))


def marker(path: str) -> str:
    """The file whose appearance says a checkpoint was written: its `.index` (a weight file: itself)."""
    return path if is_weight_file(path) else path + INDEX_SUFFIX


def exists(path: str) -> bool:
    """Whether a checkpoint's index and its first data shard are on disk (a weight file: is there)."""
    if is_weight_file(path):
        return os.path.isfile(path)
    if not os.path.isfile(path + INDEX_SUFFIX):
        return False
    # Shard 0 of N is always there; N is 1 unless the saver was sharded. Only then list the
    # directory: with hundreds of checkpoints in it, a glob per call costs milliseconds.
    return os.path.isfile(path + ".data-00000-of-00001") or bool(
        glob.glob(glob.escape(path) + ".data-00000-of-*"))


#: (path, device, inode, size, mtime) of an index file -> its fingerprint: each file is hashed once.
_fingerprints: dict[tuple[str, int, int, int, int], str] = {}


def fingerprint(path: str) -> str | None:
    """What the checkpoint at prefix `path` is, beyond its name: a hash of its `.index` file (which
    holds every tensor's offset and checksum), or None when there is no index. A training restarted
    from scratch writes the same names with other fingerprints."""
    index = path if is_weight_file(path) else path + INDEX_SUFFIX  # a weight file: all of it
    try:
        stat = os.stat(index)
        cache_key = (index, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = _fingerprints.get(cache_key)
        if cached is not None:
            return cached
        with open(index, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()[:16]
    except OSError:
        return None
    if len(_fingerprints) > 10_000:
        _fingerprints.clear()
    _fingerprints[cache_key] = digest
    return digest


def files(path: str) -> list[str]:
    """The files of the checkpoint at `path` (sorted). The usual unsharded checkpoint is looked for
    by name; only a sharded one lists the directory, which costs milliseconds per checkpoint behind
    a backlog of thousands."""
    if is_weight_file(path):
        return [path]
    usual = [path + suffix for suffix in (".data-00000-of-00001", INDEX_SUFFIX, ".meta")]
    if os.path.isfile(usual[0]):
        return [name for name in usual if os.path.isfile(name)]
    return sorted(glob.glob(glob.escape(path) + ".*"))


def snapshot(path: str) -> tuple[tuple[str, int, int], ...]:
    """(file, size, mtime) of every file of the checkpoint at `path`: what changes while it is still
    being written."""
    found = []
    for name in files(path):
        try:
            stat = os.stat(name)
        except OSError:
            continue
        found.append((os.path.basename(name), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def hold(path: str) -> dict[str, Any]:
    """The checkpoint's files, opened (read-only): a kept copy can still be made from them after
    training deletes the files. Name -> open file; the caller closes them."""
    held = {}
    for name in files(path):
        if name.endswith(".tempstate") or ".tmp" in os.path.basename(name):
            continue
        try:
            held[os.path.basename(name)] = open(name, "rb")  # noqa: SIM115 - closed by release()
        except OSError:
            continue
    return held


def release(held: dict[str, Any]) -> None:
    for handle in held.values():
        handle.close()


def scan(model_dir: str, families: set[str], weight_files: bool = False) -> list[Checkpoint]:
    """The checkpoints on disk (their `.index` is there) whose name family is in `families`: those a
    state file no longer lists, or never did (`max_to_keep=0` lists only the newest); with
    `weight_files`, Keras weight files too."""
    root = normalize_model_dir(model_dir)
    found = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        if not is_text(entry.name):
            continue
        if weight_files and is_weight_file(entry.name) and not entry.name.startswith("."):
            ckpt = _at(root, entry.name)
            if ckpt is not None:
                found.append(ckpt)
        elif entry.name.endswith(INDEX_SUFFIX):
            ckpt = _at(root, entry.name[: -len(INDEX_SUFFIX)])
            if ckpt is not None and family(ckpt.name) in families:
                found.append(ckpt)
    return sorted(found, key=by_step)


def by_step(ckpt: Checkpoint) -> tuple[bool, int, str]:
    """Sort key: oldest step first, checkpoints without a step last, then by name."""
    return ckpt.name_step is None, ckpt.name_step or 0, ckpt.name


def is_text(name: str) -> bool:
    """Whether a file name is valid UTF-8 (os gives undecodable bytes as surrogates): it can be a key."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_state(model_dir: str) -> State:
    """Read `model_dir/checkpoint` with TensorFlow's parser.

    Returns an empty State when there is no state file yet. Raises StateFileError when the
    file exists but is not a valid CheckpointState.
    """
    state_path = os.path.join(model_dir, STATE_FILE)
    if not os.path.isfile(state_path):
        return State()
    plain = _read_plain_state(state_path)
    if plain is not None:
        return _resolve(model_dir, plain)  # (relative paths are relative to the model directory)
    import tensorflow as tf
    from google.protobuf import text_format

    try:
        proto = tf.train.get_checkpoint_state(model_dir)
    except (ValueError, text_format.ParseError, tf.errors.OpError) as err:
        # ValueError covers UnicodeDecodeError and TF's "Invalid checkpoint state".
        raise StateFileError(f"cannot parse {state_path}: {first_line(err)}") from err
    if proto is None:
        if not os.path.isfile(state_path):  # deleted between the two looks
            return State()
        raise StateFileError(f"cannot parse {state_path}: not a CheckpointState text proto")
    listed = list(proto.all_model_checkpoint_paths)
    if proto.model_checkpoint_path not in listed:
        listed.append(proto.model_checkpoint_path)
    return _resolve(model_dir, listed)


#: A state file line as TensorFlow writes it: a path without quotes or escapes in it, or a timestamp.
_PLAIN_LINE = re.compile(r'(model_checkpoint_path|all_model_checkpoint_paths): "([^"\\\n]*)"'
                         r'|(all_model_checkpoint_timestamps|last_preserved_timestamp): [0-9.eE+-]+')


def _read_plain_state(path: str) -> list[str] | None:
    """The listed paths of a state file written the way TensorFlow writes it (one `key: "path"` per
    line), read without TensorFlow's text-proto parser, which takes a third of a second for a few
    thousand lines; None for anything else (escapes, comments, odd keys), which TensorFlow's parser
    then reads (or refuses) as before. The newest comes last, as get_checkpoint_state lists it."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return parse_plain_state(text)


def parse_plain_state(text: str) -> list[str] | None:
    """`_read_plain_state` of a state file's text (a remote one's, downloaded)."""
    newest: list[str] = []
    listed: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        match = _PLAIN_LINE.fullmatch(line)
        if match is None:
            return None
        if match.group(1) == "model_checkpoint_path":
            newest.append(match.group(2))
        elif match.group(1):
            listed.append(match.group(2))
    if len(newest) != 1 or not newest[0]:
        return None  # TensorFlow's parser decides (and says why it is invalid)
    return listed + ([] if newest[0] in listed else newest)


def _resolve(model_dir: str, listed: list[str]) -> State:
    """Keep the listed prefixes that lie inside the model directory, oldest step first."""
    root = normalize_model_dir(model_dir)
    found: dict[str, Checkpoint] = {}
    order: dict[str, int] = {}
    ignored: list[str] = []
    for position, raw in enumerate(listed):
        ckpt = _at(root, raw)
        if ckpt is None:
            shown = raw if os.path.isabs(raw) else os.path.join(model_dir, raw)  # as TensorFlow's parser gives it
            if shown not in ignored:
                ignored.append(shown)
            continue
        if ckpt.name not in found:
            found[ckpt.name] = ckpt
            order[ckpt.name] = position
    checkpoints = sorted(
        found.values(),
        key=lambda c: (c.name_step is None, c.name_step or 0, order[c.name]),
    )
    return State(checkpoints=checkpoints, ignored=ignored)


def _relative_name(root: str, raw: str) -> str | None:
    """`raw` relative to `root`, or None when it points outside it or is not a prefix."""
    if raw.startswith(root + os.sep):  # the directory's own absolute path, as a v1 Saver writes it
        rest = raw[len(root) + 1:]
        if os.sep not in rest and rest not in ("", ".", "..") and not os.path.islink(raw):
            return rest if is_text(rest) else None
    if os.sep not in raw and raw not in ("", ".", "..") and not os.path.islink(os.path.join(root, raw)):
        return raw if is_text(raw) else None  # a plain name in the directory (thousands at a scan)
    try:
        resolved = os.path.realpath(os.path.join(root, raw))
        inside = os.path.commonpath([root, resolved]) == root
    except ValueError:  # embedded NUL, or paths on different drives
        return None
    if not inside or resolved == root:
        return None
    name = os.path.relpath(resolved, root)
    return name if is_text(name) else None

