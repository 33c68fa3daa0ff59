"""checkpoints: reading the state file with TensorFlow's parser, names, steps, paths."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from evaluator import checkpoints
from evaluator.errors import StateFileError
from tests.conftest import train


def names(state: checkpoints.State) -> list[str]:
    return [c.name for c in state.checkpoints]


def test_no_state_file_is_an_empty_state(tmp_path: Path) -> None:
    assert checkpoints.read_state(str(tmp_path)) == checkpoints.State()


def test_saver_absolute_paths(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    saved = train(model_dir, max_to_keep=2)
    text = (model_dir / "checkpoint").read_text()
    assert f'"{model_dir}/model.ckpt-60"' in text  # Saver writes absolute paths by default
    state = checkpoints.read_state(str(model_dir))
    assert names(state) == ["model.ckpt-40", "model.ckpt-60"]
    assert [c.path for c in state.checkpoints] == saved[-2:]
    assert [c.name_step for c in state.checkpoints] == [40, 60]


def test_saver_relative_paths(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    train(model_dir, relative_paths=True)
    assert 'model_checkpoint_path: "model.ckpt-60"' in (model_dir / "checkpoint").read_text()
    state = checkpoints.read_state(str(model_dir))
    assert names(state) == ["model.ckpt-20", "model.ckpt-40", "model.ckpt-60"]
    assert state.checkpoints[0].path == os.path.join(os.path.realpath(model_dir), "model.ckpt-20")


def test_checkpoint_manager_state_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "managed"
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(model_dir), max_to_keep=3)
    for number in (5, 10, 15, 20):
        step.assign(number)
        manager.save(checkpoint_number=number)
    text = (model_dir / "checkpoint").read_text()
    assert 'model_checkpoint_path: "ckpt-20"' in text and "all_model_checkpoint_timestamps" in text
    state = checkpoints.read_state(str(model_dir))
    assert names(state) == ["ckpt-10", "ckpt-15", "ckpt-20"]
    assert all(checkpoints.exists(c.path) for c in state.checkpoints)


def test_oldest_step_first_whatever_the_file_order(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "m-300"\nall_model_checkpoint_paths: "m-300"\n'
        'all_model_checkpoint_paths: "m-20"\nall_model_checkpoint_paths: "m-100"\n'
        'all_model_checkpoint_paths: "latest"\n'
    )
    assert names(checkpoints.read_state(str(tmp_path))) == ["m-20", "m-100", "m-300", "latest"]


def test_paths_outside_the_directory_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "checkpoint").write_text(
        'model_checkpoint_path: "/etc/passwd"\nall_model_checkpoint_paths: "../elsewhere/m-1"\n'
        'all_model_checkpoint_paths: "m-2"\nall_model_checkpoint_paths: "/etc/passwd"\n'
    )
    state = checkpoints.read_state(str(tmp_path / "model"))
    assert names(state) == ["m-2"]
    # TensorFlow joins relative paths onto the directory before we see them.
    assert state.ignored == [str(tmp_path / "model" / "../elsewhere/m-1"), "/etc/passwd"]


def test_moved_directory_with_relative_paths_still_resolves(tmp_path: Path, trained_dir: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(trained_dir, moved)
    state = checkpoints.read_state(str(moved))
    assert all(checkpoints.exists(c.path) for c in state.checkpoints)


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe garbage", b"model_checkpoint_path: 12 {", b'all_model_checkpoint_paths: "x"\n'])
def test_garbage_state_file_raises_state_file_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "checkpoint").write_bytes(content)
    with pytest.raises(StateFileError, match="cannot parse"):
        checkpoints.read_state(str(tmp_path))


@pytest.mark.parametrize(("name", "step"), [
    ("model.ckpt-1200", 1200), ("ckpt-3", 3), ("dir/model.ckpt-7", 7), ("model.ckpt", None),
    ("model-12-final", None), ("-5", 5), ("model.ckpt-00012", 12),
])
def test_step_from_name(name: str, step: int | None) -> None:
    assert checkpoints.step_from_name(name) == step


def test_exists_needs_index_and_data(tmp_path: Path) -> None:
    prefix = tmp_path / "m-1"
    assert not checkpoints.exists(str(prefix))
    Path(f"{prefix}.index").write_bytes(b"")
    assert not checkpoints.exists(str(prefix))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(b"")
    assert checkpoints.exists(str(prefix))


def _by_tensorflow(model_dir: Path) -> checkpoints.State:
    """What TensorFlow's own parser makes of the state file (the reference for the plain reader)."""
    proto = tf.train.get_checkpoint_state(str(model_dir))
    listed = list(proto.all_model_checkpoint_paths)
    if proto.model_checkpoint_path not in listed:
        listed.append(proto.model_checkpoint_path)
    return checkpoints._resolve(str(model_dir), listed)


@pytest.mark.parametrize("relative", [False, True])
def test_a_plain_state_file_reads_as_tensorflow_reads_it(tmp_path: Path, relative: bool) -> None:
    """State files as TF1 Savers and TF2 CheckpointManagers write them (timestamps too) are read
    without TensorFlow's text-proto parser, to the same State."""
    names_ = [f"model.ckpt-{i}" for i in range(1, 40)]
    paths = names_ if relative else [str(tmp_path / n) for n in names_]
    tf.compat.v1.train.update_checkpoint_state(str(tmp_path), paths[-1], all_model_checkpoint_paths=paths,
                                               all_model_checkpoint_timestamps=[1.7e9 + i for i in range(len(paths))],
                                               last_preserved_timestamp=1.6e9)
    assert "all_model_checkpoint_timestamps" in (tmp_path / "checkpoint").read_text()
    assert checkpoints._read_plain_state(str(tmp_path / "checkpoint")) is not None
    assert checkpoints.read_state(str(tmp_path)) == _by_tensorflow(tmp_path)


@pytest.mark.parametrize("text", [
    'model_checkpoint_path: "a\\"b-3"\nall_model_checkpoint_paths: "a\\"b-3"\n',  # an escape
    '# a comment\nmodel_checkpoint_path: "model.ckpt-3"\n',
    'model_checkpoint_path: "model.ckpt-3"\nmodel_checkpoint_path: "model.ckpt-4"\n',  # TF keeps the last
    'all_model_checkpoint_paths: "model.ckpt-3"\n',  # no newest: TF says it is invalid
])
def test_anything_else_goes_to_tensorflows_parser(tmp_path: Path, text: str) -> None:
    (tmp_path / "checkpoint").write_text(text)
    assert checkpoints._read_plain_state(str(tmp_path / "checkpoint")) is None
    try:
        expected: checkpoints.State | type[Exception] = _by_tensorflow(tmp_path)
    except Exception:  # noqa: BLE001 - TensorFlow refuses it: so must read_state
        with pytest.raises(StateFileError):
            checkpoints.read_state(str(tmp_path))
        return
    assert checkpoints.read_state(str(tmp_path)) == expected


def test_make_dirs_never_makes_a_removed_model_directory_again(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    with pytest.raises(FileNotFoundError):
        checkpoints.make_dirs(str(model_dir / "export" / "best"), str(model_dir))
    assert not model_dir.exists()
    model_dir.mkdir()
    checkpoints.make_dirs(str(model_dir / "export" / "best"), str(model_dir))
    checkpoints.make_dirs(str(model_dir / "export" / "best"), str(model_dir))  # there already
    checkpoints.make_dirs(str(tmp_path / "elsewhere" / "best"), str(model_dir))  # outside: made as os.makedirs
    assert (model_dir / "export" / "best").is_dir() and (tmp_path / "elsewhere" / "best").is_dir()
