"""nocode, datafiles, models/imported: the no-code options, the --data files, and the graph imported
from a checkpoint's `.meta`, checked against numpy computations over the checkpoint's own tensors."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluator import nocode
from evaluator.errors import CheckpointError, ConfigError, TaskError
from tests.conftest import DIGITS, train

sys.path.insert(0, str(DIGITS))
import digits_data  # noqa: E402

LOGITS = "layer2/add:0"


def parse(**given: object) -> nocode.NoCode | None:
    options: dict[str, object] = dict(meta_graph=False, savedmodel=False, frozen_graph=False, input_name=None,
                                      output_name=None, signature=None, data=(), data_keys=None, feature=None,
                                      label=None, task=None, locations=1, roots=0)
    options.update(given)
    return nocode.parse(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def valid_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "valid.npz"
    images, labels = digits_data.validation()
    np.savez(path, x=images, y=labels)
    return path


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("meta") / "model"
    train(model_dir, relative_paths=True)
    return model_dir


def numpy_accuracy(prefix: str, ema: bool) -> float:
    """The digits network computed in numpy from the checkpoint's tensors (the averages with `ema`)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    suffix = "/ExponentialMovingAverage" if ema else ""
    w1, b1, w2, b2 = (reader.get_tensor(f"{name}{suffix}") for name in
                      ("layer1/weights", "layer1/biases", "layer2/weights", "layer2/biases"))
    images, labels = digits_data.validation()
    logits = np.maximum(images @ w1 + b1, 0) @ w2 + b2
    return float(np.mean(logits.argmax(axis=1) == labels))


# -- the options -------------------------------------------------------------------------------

def test_a_task_run_is_not_no_code() -> None:
    assert parse(task="x.py:T") is None


@pytest.mark.parametrize(("given", "fragment"), [
    ({}, "give --task SPEC (the model and data in Python), or a no-code mode"),
    ({"data": ("v.npz",)}, "--data is for the no-code modes: add --meta-graph"),
    ({"meta_graph": True, "task": "x.py:T", "data": ("v.npz",)}, "--task and --meta-graph exclude each other"),
    ({"meta_graph": True, "input_name": "x", "output_name": "y"}, "--meta-graph needs the validation data"),
    ({"meta_graph": True, "data": ("v.npz",), "output_name": "y"}, "--meta-graph needs --input: the tensor names"),
    ({"meta_graph": True, "data": ("v.npz",), "input_name": "x", "output_name": "y", "locations": 2},
     "--meta-graph evaluates one model directory"),
    ({"meta_graph": True, "data": ("a.npz", "b.npz"), "input_name": "x", "output_name": "y"},
     "several --data make named validation sets"),
])
def test_options_that_cannot_work(given: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(**given)
    assert fragment in str(err.value)


def test_data_files_and_names(tmp_path: Path, valid_npz: Path) -> None:
    request = parse(meta_graph=True, input_name="x-input", output_name=LOGITS, data=(f"clean={valid_npz}",
                                                                                      f"again={valid_npz}"))
    assert request is not None and request.input_name == "x-input:0" and request.output_name == LOGITS
    assert [f.name for f in request.data.files] == ["clean", "again"] and request.data.named
    with pytest.raises(ConfigError, match=f"--data: file {tmp_path}/none.npz does not exist"):
        parse(meta_graph=True, input_name="x", output_name="y", data=(str(tmp_path / "none.npz"),))
    record = tmp_path / "valid.tfrecord"
    record.write_bytes(b"")
    with pytest.raises(ConfigError, match="needs --feature NAME:SHAPE:DTYPE and --label NAME"):
        parse(meta_graph=True, input_name="x", output_name="y", data=(str(record),))
    with pytest.raises(ConfigError, match="SHAPE must be positive whole numbers"):
        parse(meta_graph=True, input_name="x", output_name="y", data=(str(record),), feature="p:a:float32",
              label="l")


# -- the data files ----------------------------------------------------------------------------

def write_tfrecord(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """tf.train.Example records of `pixels` (floats) and `label` (an int64), GZIP if the name ends in .gz."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if path.name.endswith(".gz") else "")
    with tf.io.TFRecordWriter(str(path), options=options) as writer:
        for image, label in zip(images, labels):
            example = tf.train.Example(features=tf.train.Features(feature={
                "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=image.reshape(-1))),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
            writer.write(example.SerializeToString())
    return path


def test_npz_with_other_keys_and_tfrecord_read_the_same_arrays(tmp_path: Path) -> None:
    from evaluator.datafiles import read_npz, read_tfrecord

    images, labels = digits_data.validation()
    np.savez(tmp_path / "v.npz", images=images, labels=labels)
    got = read_npz(str(tmp_path / "v.npz"), ("images", "labels"))
    assert np.array_equal(got[0], images) and np.array_equal(got[1], labels)
    with pytest.raises(TaskError, match=r"has no array 'x' \(it has images, labels\); give --data-keys"):
        read_npz(str(tmp_path / "v.npz"), ("x", "y"))
    path = write_tfrecord(tmp_path / "v.tfrecord", images, labels)
    features, read_labels = read_tfrecord(str(path), nocode.FeatureSpec.parse("pixels:8,8:float32"), "label")
    assert features.shape == (len(labels), 8, 8) and np.array_equal(features.reshape(len(labels), -1), images)
    assert np.array_equal(read_labels, labels)
    with pytest.raises(TaskError, match=r"example 0 has no feature 'image' \(it has label, pixels\)"):
        read_tfrecord(str(path), nocode.FeatureSpec.parse("image:64:float32"), "label")
    with pytest.raises(TaskError, match="example 0 has 64 values of 'pixels', --feature says shape \\[10\\]"):
        read_tfrecord(str(path), nocode.FeatureSpec.parse("pixels:10:float32"), "label")


# -- the imported graph ------------------------------------------------------------------------

def build(meta_dir: Path, data: Path, *, ema: bool = True, input_name: str = "x-input:0",
          output_name: str = LOGITS):  # type: ignore[no-untyped-def]
    from evaluator import models

    request = parse(meta_graph=True, input_name=input_name, output_name=output_name, data=(str(data),))
    assert request is not None
    meta = nocode.first_meta(str(meta_dir))
    assert meta is not None and meta.endswith("model.ckpt-20.meta")
    task = nocode.task(request, meta)
    return models.build(task, device="cpu", ema=ema)


@pytest.mark.parametrize("ema", [True, False], ids=["ema", "raw"])
def test_accuracy_is_numpy_over_the_checkpoint_tensors(meta_dir: Path, valid_npz: Path, ema: bool) -> None:
    from evaluator import checkpoints

    model = build(meta_dir, valid_npz, ema=ema)
    try:
        for ckpt in checkpoints.read_state(str(meta_dir)).checkpoints:
            outcome = model.evaluate(ckpt)
            assert outcome.step == ckpt.name_step
            assert outcome.ema_source == ("tf1-names" if ema else "none")
            assert outcome.metrics.accuracy == pytest.approx(numpy_accuracy(ckpt.path, ema), abs=1e-9)
    finally:
        model.close()


def test_the_graph_is_imported_once(meta_dir: Path, valid_npz: Path) -> None:
    from evaluator import checkpoints

    model = build(meta_dir, valid_npz)
    try:
        listed = checkpoints.read_state(str(meta_dir)).checkpoints
        model.evaluate(listed[0])
        before = model.operations
        for ckpt in listed:
            model.evaluate(ckpt)
        assert model.operations == before
    finally:
        model.close()


def test_a_checkpoint_of_another_graph_fails(tmp_path: Path, meta_dir: Path, valid_npz: Path) -> None:
    from evaluator import checkpoints

    other = tmp_path / "other"
    train(other, steps=20, save_every=20, hidden_units=16)
    mixed = tmp_path / "mixed"
    shutil.copytree(meta_dir, mixed)
    for path in other.glob("model.ckpt-20.*"):
        shutil.copy(path, mixed / path.name.replace("-20", "-80"))
    model = build(mixed, valid_npz)
    try:
        ckpt = checkpoints.at(str(mixed), "model.ckpt-80")
        assert ckpt is not None
        with pytest.raises(CheckpointError) as err:
            model.evaluate(ckpt)
        assert str(err.value) == ("model.ckpt-80.meta is another graph than the one imported from "
                                  "model.ckpt-20.meta (--meta-graph imports one graph): evaluate it with a "
                                  "--name of its own, or a task")
    finally:
        model.close()


@pytest.mark.parametrize(("names", "message"), [
    ({"input_name": "x-inptu:0"}, "--input x-inptu:0: no such tensor in model.ckpt-20.meta; nearest: x-input:0"),
    ({"output_name": "layer2/ad:0"}, "--output layer2/ad:0: no such tensor in model.ckpt-20.meta; nearest: "
                                     "layer2/add:0"),
])
def test_a_tensor_not_in_the_graph_names_the_nearest(meta_dir: Path, valid_npz: Path, names: dict[str, str],
                                                     message: str) -> None:
    with pytest.raises(TaskError) as err:
        build(meta_dir, valid_npz, **names)
    assert str(err.value).startswith(message)


def test_data_that_does_not_fit_the_input(tmp_path: Path, meta_dir: Path) -> None:
    path = tmp_path / "wide.npz"
    np.savez(path, x=np.zeros((4, 10), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(TaskError) as err:
        build(meta_dir, path)
    assert str(err.value) == (f"--data {path}: the features are [10] per example, but the input x-input:0 "
                              "takes [?, 64] (batch first)")


# -- arbitrary input -----------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@_fuzz
@given(input_name=st.none() | _text, output_name=st.none() | _text, feature=st.none() | _text,
       keys=st.none() | _text, label=st.none() | _text, modes=st.lists(st.booleans(), min_size=3, max_size=3))
def test_any_option_values(tmp_path: Path, input_name: str | None, output_name: str | None, feature: str | None,
                           keys: str | None, label: str | None, modes: list[bool]) -> None:
    """Whatever the values, the options parse or say why not (ConfigError), never crash."""
    (tmp_path / "v.tfrecord").write_bytes(b"")
    try:
        request = parse(meta_graph=modes[0], savedmodel=modes[1], frozen_graph=modes[2], input_name=input_name,
                        output_name=output_name, data=(str(tmp_path / "v.tfrecord"),), data_keys=keys,
                        feature=feature, label=label)
    except ConfigError:
        return
    assert request is not None and request.describe().startswith("--")


@_fuzz
@given(content=st.binary(max_size=300))
def test_any_bytes_as_data(tmp_path: Path, content: bytes) -> None:
    """Arbitrary bytes as an .npz or a TFRecord file: a TaskError, never a crash."""
    from evaluator.datafiles import read_npz, read_tfrecord

    path = tmp_path / "data"
    path.write_bytes(content)
    for read in (lambda: read_npz(str(path), ("x", "y")),
                 lambda: read_tfrecord(str(path), nocode.FeatureSpec("p", (2,), "float32"), "l")):
        try:
            read()
        except TaskError:
            pass


# -- the classic mnist_train.py, as it was written ---------------------------------------------

def classic_mnist_train(model_dir: Path, steps: int = 30, save_every: int = 10) -> list[str]:
    """mnist_inference.py + mnist_train.py of the TF1 books, on the digits (64 pixels, 16 hidden
    units): `global_step = tf.Variable(0, trainable=False)` (an int32 named `Variable`), one-hot
    labels fed to `y-input`, an L2 regularizer collected in `losses`, the EMA applied with the train
    step, `Saver().save(sess, path, global_step=global_step)`."""
    import tensorflow as tf

    v1 = tf.compat.v1
    images, labels = digits_data.training()
    one_hot = np.eye(10, dtype=np.float32)[labels]
    graph = tf.Graph()
    saved = []
    with graph.as_default():
        v1.set_random_seed(0)
        x = v1.placeholder(tf.float32, [None, 64], name="x-input")
        y_ = v1.placeholder(tf.float32, [None, 10], name="y-input")
        regularizer = tf.keras.regularizers.L2(1e-4)

        def layer(name: str, inputs: tf.Tensor, fan_in: int, fan_out: int) -> tf.Tensor:
            with v1.variable_scope(name):
                weights = v1.get_variable("weights", [fan_in, fan_out],
                                          initializer=v1.truncated_normal_initializer(stddev=0.1))
                v1.add_to_collection("losses", regularizer(weights))
                biases = v1.get_variable("biases", [fan_out], initializer=v1.constant_initializer(0.0))
                return tf.matmul(inputs, weights) + biases

        y = layer("layer2", tf.nn.relu(layer("layer1", x, 64, 16)), 16, 10)
        global_step = tf.Variable(0, trainable=False)
        variable_averages = v1.train.ExponentialMovingAverage(0.99, global_step)
        variables_averages_op = variable_averages.apply(v1.trainable_variables())
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(logits=y, labels=tf.argmax(y_, 1))
        loss = tf.reduce_mean(cross_entropy) + tf.add_n(v1.get_collection("losses"))
        train_step = v1.train.GradientDescentOptimizer(0.5).minimize(loss, global_step=global_step)
        with tf.control_dependencies([train_step, variables_averages_op]):
            train_op = tf.no_op(name="train")
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            rng = np.random.default_rng(0)
            for _ in range(steps):
                batch = rng.integers(0, len(labels), 64)
                _, step = session.run([train_op, global_step], {x: images[batch], y_: one_hot[batch]})
                if step % save_every == 0:
                    saved.append(saver.save(session, str(model_dir / "model.ckpt"), global_step=global_step))
    return saved


@pytest.mark.parametrize("ema", [True, False], ids=["ema", "raw"])
def test_the_classic_mnist_train_with_one_hot_labels(tmp_path: Path, ema: bool) -> None:
    from evaluator import checkpoints, models

    saved = classic_mnist_train(tmp_path / "model")
    images, labels = digits_data.validation()
    data = tmp_path / "valid.npz"
    np.savez(data, x=images, y=np.eye(10, dtype=np.float32)[labels])  # one-hot, as y-input takes them
    request = parse(meta_graph=True, input_name="x-input:0", output_name=LOGITS, data=(str(data),))
    assert request is not None
    meta = nocode.first_meta(str(tmp_path / "model"))
    assert meta is not None
    model = models.build(nocode.task(request, meta), device="cpu", ema=ema)
    listed = checkpoints.read_state(str(tmp_path / "model")).checkpoints
    assert [c.path for c in listed] == saved
    for ckpt in listed:
        outcome = model.evaluate(ckpt)
        assert outcome.step == ckpt.name_step and outcome.ema_source == ("tf1-names" if ema else "none")
        assert outcome.metrics.accuracy == pytest.approx(numpy_accuracy(ckpt.path, ema), abs=1e-9)


def test_waiting_for_the_first_checkpoint_keeps_systemd_waiting(tmp_path: Path, valid_npz: Path) -> None:
    """Under systemd (Type=notify), the start is not READY until the graph is built: while training
    has written nothing, the start's timeout is pushed back and the watchdog fed; a stop then ends it."""
    import socket
    import threading

    from evaluator.notify import Notifier
    from evaluator.options import WatchOptions
    from evaluator.service import Service
    from tests.conftest import sqlite_url

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(5)
    (tmp_path / "model").mkdir()
    request = parse(meta_graph=True, input_name="x-input:0", output_name=LOGITS, data=(str(valid_npz),))
    assert request is not None
    options = WatchOptions(model_dir=str(tmp_path / "model"), task=request.describe(), nocode=request,
                           db_url=sqlite_url(tmp_path / "e.db"), device="cpu")
    service = Service(options, Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                         "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}))
    messages: list[str] = []

    def listen() -> None:  # the service runs in the main thread (its signal handlers need it)
        try:
            messages.extend(listener.recv(4096).decode() for _ in range(4))
        finally:
            service.shutdown.request("test")

    thread = threading.Thread(target=listen)
    thread.start()
    result = [service.run()]
    thread.join(timeout=30)
    listener.close()
    assert result == [0]
    assert any("EXTEND_TIMEOUT_USEC=3000000" in m for m in messages) and "WATCHDOG=1" in messages
    assert not any("READY=1" in m for m in messages)
    assert not (tmp_path / "e.db").exists()  # nothing built, nothing written
