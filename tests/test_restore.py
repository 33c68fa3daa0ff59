"""restore: the EMA map, the key check, object-based checkpoints, steps, deleted and corrupt files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from evaluator import checkpoints
from evaluator.errors import CheckpointError, CheckpointMissing, TaskError
from evaluator.restore import Restorer

v1 = tf.compat.v1


def two_layer_graph(hidden: int = 64, scope: str = "layer1") -> tuple[tf.Graph, v1.Session]:
    """The digits network's variables, as the evaluator builds them."""
    graph = tf.Graph()
    with graph.as_default():
        with v1.variable_scope(scope):
            v1.get_variable("weights", [64, hidden])
            v1.get_variable("biases", [hidden])
        with v1.variable_scope("layer2"):
            v1.get_variable("weights", [hidden, 10])
            v1.get_variable("biases", [10])
    return graph, v1.Session(graph=graph)


def value(graph: tf.Graph, session: v1.Session, name: str) -> np.ndarray:
    with graph.as_default():
        var = next(v for v in v1.global_variables() if v.op.name == name)
    return session.run(var)


def latest(model_dir: Path) -> checkpoints.Checkpoint:
    return checkpoints.read_state(str(model_dir)).checkpoints[-1]


def test_ema_restores_the_shadow_values(trained_dir: Path) -> None:
    graph, session = two_layer_graph()
    ckpt = latest(trained_dir)
    info = Restorer(graph, ema=True).restore(session, ckpt)
    reader = tf.train.load_checkpoint(ckpt.path)
    assert info.ema is True
    assert info.step == 60
    restored = value(graph, session, "layer1/weights")
    np.testing.assert_array_equal(restored, reader.get_tensor("layer1/weights/ExponentialMovingAverage"))
    assert not np.array_equal(restored, reader.get_tensor("layer1/weights"))


def test_no_ema_restores_the_raw_values(trained_dir: Path) -> None:
    graph, session = two_layer_graph()
    ckpt = latest(trained_dir)
    info = Restorer(graph, ema=False).restore(session, ckpt)
    assert info.ema is False
    np.testing.assert_array_equal(value(graph, session, "layer2/biases"),
                                  tf.train.load_checkpoint(ckpt.path).get_tensor("layer2/biases"))


def test_no_graph_growth_across_checkpoints(trained_dir: Path) -> None:
    graph, session = two_layer_graph()
    restorer = Restorer(graph, ema=True)
    state = checkpoints.read_state(str(trained_dir))
    restorer.restore(session, state.checkpoints[0])
    operations = len(graph.get_operations())
    for ckpt in state.checkpoints * 3:
        restorer.restore(session, ckpt)
    assert len(graph.get_operations()) == operations


def write_checkpoint(prefix: Path, tensors: dict[str, np.ndarray], step: int | None = None) -> checkpoints.Checkpoint:
    """A name-based checkpoint holding exactly `tensors` (and `global_step` when given)."""
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: v1.Variable(array, name=name) for name, array in tensors.items()}
        if step is not None:
            variables["global_step"] = v1.Variable(np.int64(step), name="global_step")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            v1.train.Saver(var_list=variables).save(session, str(prefix))
    return checkpoints.Checkpoint(name=prefix.name, path=str(prefix), name_step=checkpoints.step_from_name(prefix.name))


def digits_tensors(shadows: bool = True, hidden: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    shapes = {"layer1/weights": [64, hidden], "layer1/biases": [hidden], "layer2/weights": [hidden, 10],
              "layer2/biases": [10]}
    tensors = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    if shadows:
        tensors.update({f"{n}/ExponentialMovingAverage": t + 1 for n, t in list(tensors.items())})
    return tensors


def test_a_variable_without_shadow_restores_its_own_value(tmp_path: Path) -> None:
    tensors = digits_tensors()
    del tensors["layer2/biases/ExponentialMovingAverage"]
    ckpt = write_checkpoint(tmp_path / "partial-3", tensors)
    graph, session = two_layer_graph()
    info = Restorer(graph, ema=True).restore(session, ckpt)
    assert info.ema is True and info.step == 3  # no global_step variable: the name's suffix
    np.testing.assert_array_equal(value(graph, session, "layer2/biases"), tensors["layer2/biases"])
    np.testing.assert_array_equal(value(graph, session, "layer1/biases"), tensors["layer1/biases/ExponentialMovingAverage"])


def test_a_checkpoint_without_any_shadow_records_ema_false(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "plain", digits_tensors(shadows=False), step=77)
    graph, session = two_layer_graph()
    info = Restorer(graph, ema=True).restore(session, ckpt)
    assert (info.ema, info.step) == (False, 77)


def test_one_restorer_across_checkpoints_of_every_shape(tmp_path: Path) -> None:
    """After a checkpoint with every shadow, the next is restored with the same key map first: each
    that differs (a shadow gone, no shadow, no step, a shape, a variable missing, deleted) still
    gets exactly what a restorer of its own would give it, values, step, EMA and error alike."""
    full = digits_tensors()
    partial = dict(full)
    del partial["layer2/biases/ExponentialMovingAverage"]
    cases = [("full-1", full, 11), ("full-2", {n: t * 2 for n, t in full.items()}, 12), ("partial-3", partial, 13),
             ("full-4", full, None), ("plain-5", digits_tensors(shadows=False), 15), ("full-6", full, 16),
             ("narrow-7", digits_tensors(hidden=32), 17), ("full-8", full, 18),
             ("renamed-9", {n.replace("layer1", "other"): t for n, t in full.items()}, 19), ("full-10", full, 20)]
    written = [(write_checkpoint(tmp_path / name, tensors, step), tensors) for name, tensors, step in cases]
    gone = write_checkpoint(tmp_path / "gone-11", full, 21)
    for path in tmp_path.glob("gone-11.*"):
        path.unlink()
    graph, session = two_layer_graph()
    shared = Restorer(graph, ema=True)

    def outcome(restorer: Restorer, ckpt: checkpoints.Checkpoint) -> tuple[object, ...]:
        try:
            info = restorer.restore(session, ckpt)
        except (CheckpointError, CheckpointMissing) as err:
            return (type(err).__name__, str(err))
        return (info.step, info.ema, *(value(graph, session, n).tobytes() for n in
                                       ("layer1/weights", "layer1/biases", "layer2/weights", "layer2/biases")))

    for ckpt, _ in [*written, (gone, full)]:
        assert outcome(shared, ckpt) == outcome(Restorer(graph, ema=True), ckpt), ckpt.name
    assert outcome(shared, written[2][0])[1] is True  # the partial one: EMA where there is a shadow


def test_missing_variables_are_named(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "m-1", digits_tensors())
    graph, session = two_layer_graph(scope="renamed_layer")
    with pytest.raises(CheckpointError, match=r"lacks 2 variable\(s\) the graph needs: "
                                              r"renamed_layer/(weights|biases), renamed_layer/(weights|biases); it has: layer1/biases"):
        Restorer(graph, ema=True).restore(session, ckpt)


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "m-1", digits_tensors(hidden=32))
    graph, session = two_layer_graph(hidden=64)
    with pytest.raises(CheckpointError, match=r"layer1/weights/ExponentialMovingAverage has shape \[64, 32\], "
                                              r"the graph's layer1/weights \[64, 64\]"):
        Restorer(graph, ema=True).restore(session, ckpt)


def test_a_custom_ema_name(tmp_path: Path) -> None:
    tensors = {n.replace("ExponentialMovingAverage", "swa"): t for n, t in digits_tensors().items()}
    ckpt = write_checkpoint(tmp_path / "m-9", tensors)
    graph, session = two_layer_graph()
    info = Restorer(graph, ema=True, ema_name="swa").restore(session, ckpt)
    assert info.ema is True
    np.testing.assert_array_equal(value(graph, session, "layer1/weights"), tensors["layer1/weights/swa"])


def test_object_based_checkpoint_from_checkpoint_manager(tmp_path: Path) -> None:
    """A tf.train.Checkpoint/CheckpointManager checkpoint maps through its object graph's full names."""
    tensors = digits_tensors()
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: v1.Variable(array, name=name) for name, array in tensors.items()}
        variables["global_step"] = v1.Variable(np.int64(500), name="global_step")
        tracked = v1.train.Checkpoint(**{name.replace("/", "_"): var for name, var in variables.items()})
        manager = tf.train.CheckpointManager(tracked, str(tmp_path / "managed"), max_to_keep=2)
        with v1.Session(graph=graph) as session, session.as_default():
            session.run(v1.global_variables_initializer())
            manager.save(checkpoint_number=500)
    ckpt = checkpoints.read_state(str(tmp_path / "managed")).checkpoints[-1]
    assert ckpt.name == "ckpt-500"
    graph, session = two_layer_graph()
    info = Restorer(graph, ema=True).restore(session, ckpt)
    assert (info.ema, info.step) == (True, 500)
    np.testing.assert_array_equal(value(graph, session, "layer2/weights"), tensors["layer2/weights/ExponentialMovingAverage"])


def test_deleted_checkpoint_is_missing(tmp_path: Path, trained_dir: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    ckpt = latest(model_dir)
    for path in model_dir.glob(ckpt.name + ".*"):
        path.unlink()
    graph, session = two_layer_graph()
    with pytest.raises(CheckpointMissing, match="deleted before it could be read"):
        Restorer(graph, ema=True).restore(session, ckpt)


def test_data_deleted_between_index_and_data_is_missing(
    tmp_path: Path, trained_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real reader runs; the data files are deleted right after it read the index (fault injection)."""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    ckpt = latest(model_dir)
    graph, session = two_layer_graph()
    restorer = Restorer(graph, ema=True)
    real_load = tf.train.load_checkpoint

    def load_then_delete(path: str) -> tf.train.CheckpointReader:
        reader = real_load(path)
        for data in model_dir.glob(ckpt.name + ".data-*"):
            data.unlink()  # what max_to_keep does when the trainer saves again at this moment
        return reader

    monkeypatch.setattr(tf.train, "load_checkpoint", load_then_delete)
    with pytest.raises(CheckpointMissing):
        restorer.restore(session, ckpt)


@pytest.mark.parametrize("damage", ["truncate data", "empty index", "random index"])
def test_corrupt_checkpoint_fails_readably(tmp_path: Path, trained_dir: Path, damage: str) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    ckpt = latest(model_dir)
    data = Path(ckpt.path + ".data-00000-of-00001")
    index = Path(ckpt.path + ".index")
    if damage == "truncate data":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "empty index":
        index.write_bytes(b"")
    else:
        index.write_bytes(os.urandom(index.stat().st_size))
    graph, session = two_layer_graph()
    with pytest.raises(CheckpointError) as info:
        Restorer(graph, ema=True).restore(session, ckpt)
    assert not isinstance(info.value, CheckpointMissing)
    message = str(info.value)
    assert message.startswith(f"cannot restore {ckpt.name}: ") and "\n" not in message and len(message) < 600


def test_a_graph_without_variables_is_a_task_error() -> None:
    graph = tf.Graph()
    with pytest.raises(TaskError, match="created no variables"):
        Restorer(graph, ema=True)


def test_tensorflow_error_framing_is_stripped() -> None:
    from evaluator.errors import first_line

    message = ("Graph execution error:\n\nDetected at node 'save/RestoreV2' defined at (most recent call last):\n"
               '    File "<string>", line 7, in <module>\nNode: \'save/RestoreV2\'\nRead less bytes than requested\n'
               "\t [[{{node save/RestoreV2}}]]")
    assert first_line(tf.errors.OutOfRangeError(None, None, message)) == "Read less bytes than requested"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("x" * 600), limit=10) == "x" * 9 + "…"
