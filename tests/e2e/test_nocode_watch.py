"""End to end, as a user without a task file runs it: `watch MODEL_DIR --meta-graph --input ...
--output ... --data FILE --once`, then `report --format json`; and the one-line errors (text and
exit status) of what cannot work."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    DIGITS_TASK,
    Daemon,
    error_lines,
    read_rows,
    run_cli,
    saved_by,
    sqlite_url,
    start_trainer,
    train,
)
from tests.test_artifacts import freeze, keras_versions
from tests.test_cli import one_line_error
from tests.test_nocode import LOGITS, digits_data, numpy_accuracy, write_tfrecord

pytestmark = pytest.mark.slow
META = ("--meta-graph", "--input", "x-input:0", "--output", LOGITS)


@pytest.fixture
def valid_npz(tmp_path: Path) -> Path:
    path = tmp_path / "valid.npz"
    images, labels = digits_data.validation()
    np.savez(path, x=images, y=labels)
    return path


def report(db: Path) -> list[dict]:  # type: ignore[type-arg]
    result = run_cli("report", "--db", sqlite_url(db), "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_meta_graph_with_and_without_ema(tmp_path: Path, db: Path, valid_npz: Path) -> None:
    model_dir = tmp_path / "model"
    train(model_dir, steps=60, save_every=20)
    base = ["watch", str(model_dir), *META, "--data", str(valid_npz), "--db", sqlite_url(db), "--once"]
    done = run_cli(*base, "--log-format", "json")
    assert done.returncode == 0, done.stderr
    raw = run_cli(*base, "--no-ema", "--name", "raw")
    assert raw.returncode == 0, raw.stderr
    rows = report(db)
    by_name = {(r["name"], r["checkpoint"]): r for r in rows}
    assert len(rows) == 6
    for step in (20, 40, 60):
        prefix = str(model_dir / f"model.ckpt-{step}")
        averaged, plain = by_name[("default", f"model.ckpt-{step}")], by_name[("raw", f"model.ckpt-{step}")]
        assert (averaged["status"], averaged["step"], averaged["ema"], averaged["examples"]) == ("ok", step, True, 360)
        assert averaged["accuracy"] == pytest.approx(numpy_accuracy(prefix, ema=True), abs=1e-6)  # stored as float32
        assert (plain["status"], plain["ema"]) == ("ok", False)
        assert plain["accuracy"] == pytest.approx(numpy_accuracy(prefix, ema=False), abs=1e-6)
    assert (model_dir / "export" / "best" / "checkpoint").exists()  # the best kept, as for a task
    assert list((model_dir / "eval").glob("events.out.tfevents.*"))  # and the summaries
    again = run_cli(*base)  # exactly once: nothing is evaluated again
    assert again.returncode == 0 and len(read_rows(db)) == 6


def test_named_sets_and_a_checkpoint_of_another_graph(tmp_path: Path, db: Path, valid_npz: Path) -> None:
    model_dir = tmp_path / "model"
    train(model_dir, steps=40, save_every=20)
    other = tmp_path / "other"
    train(other, steps=20, save_every=20, hidden_units=16)
    for path in other.glob("model.ckpt-20.*"):
        shutil.copy(path, model_dir / path.name.replace("-20", "-80"))
    images, labels = digits_data.validation()
    np.savez(tmp_path / "half.npz", pixels=images[:100], digits=labels[:100])
    np.savez(tmp_path / "full.npz", pixels=images, digits=labels)
    done = run_cli("watch", str(model_dir), *META, "--data", f"full={tmp_path / 'full.npz'}", "--data",
                   f"half={tmp_path / 'half.npz'}", "--data-keys", "pixels,digits", "--db", sqlite_url(db), "--once")
    assert done.returncode == 3, done.stderr  # --once: a failed row
    rows = {r["checkpoint"]: r for r in report(db)}
    assert [rows[f"model.ckpt-{s}"]["status"] for s in (20, 40)] == ["ok", "ok"]
    assert list(rows["model.ckpt-20"]["metrics"]) == ["full", "half"]
    assert rows["model.ckpt-20"]["metrics"]["half"]["examples"] == 100
    failed = rows["model.ckpt-80"]
    assert failed["status"] == "failed"
    assert failed["error"] == ("model.ckpt-80.meta is another graph than the one imported from model.ckpt-20.meta "
                               "(--meta-graph imports one graph): evaluate it with a --name of its own, or a task")


def test_errors_at_start(tmp_path: Path, db: Path, valid_npz: Path) -> None:
    model_dir = tmp_path / "model"
    train(model_dir, steps=20, save_every=20)
    empty = tmp_path / "empty"
    empty.mkdir()
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=np.zeros((4, 10), np.float32), y=np.zeros(4, np.int64))
    data = ["--data", str(valid_npz)]
    base = ["--db", sqlite_url(db), "--once"]
    cases = [
        (["watch", str(model_dir), "--meta-graph", "--input", "x-inptu:0", "--output", LOGITS, *data, *base],
         "--input x-inptu:0: no such tensor in model.ckpt-20.meta; nearest: x-input:0, y-input:0, init:0"),
        (["watch", str(model_dir), "--meta-graph", "--input", "x-input:0", "--output", "layer2/ad:0", *data, *base],
         "--output layer2/ad:0: no such tensor in model.ckpt-20.meta; nearest: layer2/add:0, layer1/add:0, "
         "layer2/biases:0, layer2/MatMul:0, layer1/biases:0"),
        (["watch", str(model_dir), "--meta-graph", "--input", "x-input:0", "--output", "y-input:0", *data, *base],
         "--output y-input:0 needs y-input:0 besides --input x-input:0 in model.ckpt-20.meta: nothing feeds it; "
         "choose the logits computed from --input"),
        (["watch", str(model_dir), "--meta-graph", "--input", "x-input:0", "--output", "layer1/weights", *data,
          *base], "--output layer1/weights:0 does not depend on --input x-input:0 in model.ckpt-20.meta: choose the "
                  "logits computed from the input"),
        (["watch", str(model_dir), *META, "--data", str(wide), *base],
         f"--data {wide}: the features are [10] per example, but the input x-input:0 takes [?, 64] (batch first)"),
        (["watch", str(model_dir), *META, *data, "--task", DIGITS_TASK, *base],
         "--task and --meta-graph exclude each other: --meta-graph builds the task from the model directory "
         "and --data"),
        (["watch", str(model_dir), *data, *base],
         "--data is for the no-code modes: add --meta-graph, --savedmodel or --frozen-graph (or drop it and give "
         "--task)"),
        (["watch", str(model_dir), *base],
         "give --task SPEC (the model and data in Python), or a no-code mode: --meta-graph, --savedmodel or "
         "--frozen-graph with --data FILE"),
        (["watch", str(empty), *META, *data, *base],
         f"--meta-graph: no checkpoint with a .meta file in {empty} (tf.compat.v1.train.Saver writes one beside "
         "each checkpoint)"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        one_line_error(result, message)
        assert error_lines(result.stderr) == [message]
    assert not db.exists()  # a configuration error writes nothing


def test_started_before_training_it_waits_for_the_graph(tmp_path: Path, db: Path, valid_npz: Path,
                                                         daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    daemon = Daemon(model_dir, db, "--wait-for-dir")
    daemon.command = [*daemon.command[:daemon.command.index("--task")], *META, "--data", str(valid_npz),
                      *daemon.command[daemon.command.index("--task") + 2:]]
    daemons.append(daemon.start())
    daemon.wait_event("waiting for the first checkpoint's .meta to build the model from")
    saved = saved_by(start_trainer(model_dir, "--steps", "80", "--save-every", "20", "--max-to-keep", "10"))
    rows = daemon.wait_rows(4)
    assert daemon.stop() == 0
    assert [r["checkpoint"] for r in rows] == saved and all(r["status"] == "ok" for r in rows)
    assert [r["accuracy"] for r in rows] == pytest.approx(
        [numpy_accuracy(str(model_dir / name), ema=True) for name in saved], abs=1e-6)


def test_savedmodel_versions_and_one_savedmodel(tmp_path: Path, db: Path, valid_npz: Path) -> None:
    export_dir = tmp_path / "export"
    accuracy = keras_versions(export_dir, versions=2)
    done = run_cli("watch", str(export_dir), "--savedmodel", "--data", str(valid_npz), "--db", sqlite_url(db), "--once")
    assert done.returncode == 0, done.stderr
    rows = report(db)
    assert [(r["checkpoint"], r["step"], r["status"], r["ema"]) for r in rows] == [
        ("1", 1, "ok", False), ("2", 2, "ok", False)]
    assert [r["accuracy"] for r in rows] == pytest.approx([accuracy[1], accuracy[2]], abs=1e-6)
    assert not (export_dir / "export").exists()  # the versions are not copied
    keras_versions(tmp_path / "more", versions=3)
    shutil.move(tmp_path / "more" / "3", export_dir / "3")  # a new version: the next run evaluates it alone
    one = run_cli("watch", str(export_dir / "3"), "--savedmodel", "--data", str(valid_npz), "--db", sqlite_url(db),
                  "--once", "--name", "single")
    again = run_cli("watch", str(export_dir), "--savedmodel", "--data", str(valid_npz), "--db", sqlite_url(db), "--once")
    assert one.returncode == 0 and again.returncode == 0, one.stderr + again.stderr
    rows = report(db)
    assert sorted((r["name"], r["checkpoint"], r["step"]) for r in rows) == [
        ("default", "1", 1), ("default", "2", 2), ("default", "3", 3), ("single", "3", 3)]


def test_frozen_graphs(tmp_path: Path, db: Path, valid_npz: Path) -> None:
    model_dir = tmp_path / "model"
    saved = train(model_dir, steps=40, save_every=20)
    frozen_dir = tmp_path / "frozen"
    frozen_dir.mkdir()
    for prefix in saved:
        freeze(prefix, frozen_dir / f"{Path(prefix).name}.pb")
    done = run_cli("watch", str(frozen_dir), "--frozen-graph", "--input", "x-input:0", "--output", LOGITS,
                   "--data", str(valid_npz), "--db", sqlite_url(db), "--once")
    assert done.returncode == 0, done.stderr
    rows = report(db)
    assert [(r["checkpoint"], r["step"], r["status"]) for r in rows] == [
        ("model.ckpt-20.pb", 20, "ok"), ("model.ckpt-40.pb", 40, "ok")]
    assert [r["accuracy"] for r in rows] == pytest.approx([numpy_accuracy(p, ema=False) for p in saved], abs=1e-6)


def test_export_errors_at_start(tmp_path: Path, db: Path, valid_npz: Path) -> None:
    export_dir = tmp_path / "export"
    keras_versions(export_dir, versions=1)
    frozen_dir = tmp_path / "frozen"
    frozen_dir.mkdir()
    (frozen_dir / "graph.pb").write_bytes(b"")  # an empty GraphDef: no tensors
    base = ["--data", str(valid_npz), "--db", sqlite_url(db), "--once"]
    cases = [
        (["watch", str(export_dir), "--savedmodel", "--signature", "predict", *base],
         "--signature predict: 1 has no such signature (it has serve, serving_default)"),
        (["watch", str(export_dir), "--savedmodel", "--output", "logits", *base],
         "--output logits: signature serving_default of 1 has no such output (it has output_0)"),
        (["watch", str(export_dir), "--savedmodel", "--input", "x", *base],
         "--input is for --meta-graph and --frozen-graph: a SavedModel's signature names its input"),
        (["watch", str(tmp_path), "--savedmodel", *base],
         f"--savedmodel: no SavedModel in {tmp_path} (a saved_model.pb there, or in numbered version directories "
         "1/, 2/, ...)"),
        (["watch", str(frozen_dir), "--frozen-graph", "--input", "x-input:0", "--output", LOGITS, *base],
         "--input x-input:0: no such tensor in graph.pb"),
        (["watch", str(export_dir), "--savedmodel", "--export", "savedmodel", *base],
         "--export does not apply to --savedmodel: the exported models are kept where they are"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        one_line_error(result, message)
        assert error_lines(result.stderr) == [message]
    assert not db.exists()


@pytest.mark.parametrize("watching", [(), ("--poll", "--poll-interval", "0.2")], ids=["events", "poll"])
def test_a_version_written_while_watching_is_evaluated_once_complete(tmp_path: Path, db: Path, valid_npz: Path,
                                                                     daemons: list[Daemon],
                                                                     watching: tuple[str, ...]) -> None:
    staged = tmp_path / "staged"
    accuracy = keras_versions(staged, versions=2)
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    shutil.copytree(staged / "1", export_dir / "1")
    daemon = Daemon(export_dir, db, *watching, "--rescan", "60")  # no re-scan tick: the watcher must see it
    at = daemon.command.index("--task")
    daemon.command[at:at + 2] = ["--savedmodel", "--data", str(valid_npz)]
    daemons.append(daemon.start())
    daemon.wait_rows(1)
    shutil.copytree(staged / "2", export_dir / "2", ignore=shutil.ignore_patterns("saved_model.pb"))
    time.sleep(1.5)  # the variables are there, the graph not yet: not a version yet
    assert len(read_rows(db)) == 1
    shutil.copy(staged / "2" / "saved_model.pb", export_dir / "2" / "saved_model.pb")
    rows = daemon.wait_rows(2)
    assert daemon.stop() == 0
    assert [(r["checkpoint"], r["step"], r["status"]) for r in rows] == [("1", 1, "ok"), ("2", 2, "ok")]
    assert [r["accuracy"] for r in rows] == pytest.approx([accuracy[1], accuracy[2]], abs=1e-6)


def test_the_exports_of_the_best_evaluate_as_the_checkpoint_did(tmp_path: Path, db: Path, valid_npz: Path) -> None:
    """--meta-graph keeps the best and exports it (--export savedmodel, frozen: the averages); those
    exports, watched with --savedmodel and --frozen-graph, give the accuracy its checkpoint had."""
    model_dir = tmp_path / "model"
    train(model_dir, steps=40, save_every=20)
    done = run_cli("watch", str(model_dir), *META, "--data", str(valid_npz), "--db", sqlite_url(db), "--once",
                   "--export", "savedmodel", "--export", "frozen", "--metric", "top_k_accuracy:3")
    assert done.returncode == 0, done.stderr
    best = next(r for r in report(db) if r["best"])
    exported = model_dir / "export" / "best"
    served = run_cli("watch", str(exported / "savedmodel"), "--savedmodel", "--data", str(valid_npz),
                     "--db", sqlite_url(db), "--once", "--metric", "top_k_accuracy:3")
    frozen = run_cli("watch", str(exported / "frozen"), "--frozen-graph", "--input", "features", "--output",
                     "logits", "--data", str(valid_npz), "--db", sqlite_url(db), "--once")
    assert served.returncode == 0 and frozen.returncode == 0, served.stderr + frozen.stderr
    rows = {Path(r["model_dir"]).name: r for r in report(db) if r["model_dir"] != str(model_dir.resolve())}
    assert set(rows) == {"savedmodel", "frozen"}
    assert rows["savedmodel"]["step"] == rows["frozen"]["step"] == best["step"]
    assert rows["savedmodel"]["accuracy"] == rows["frozen"]["accuracy"] == best["accuracy"]
    assert rows["savedmodel"]["metrics"]["validation"]["top_k_accuracy:3"] == \
        best["metrics"]["validation"]["top_k_accuracy:3"]


def test_tfrecord_data(tmp_path: Path, db: Path) -> None:
    model_dir = tmp_path / "model"
    saved = train(model_dir, steps=40, save_every=20)
    images, labels = digits_data.validation()
    data = write_tfrecord(tmp_path / "valid.tfrecord.gz", images, labels)
    done = run_cli("watch", str(model_dir), *META, "--data", str(data), "--feature", "pixels:64:float32",
                   "--label", "label", "--db", sqlite_url(db), "--once")
    assert done.returncode == 0, done.stderr
    rows = report(db)
    assert [(r["checkpoint"], r["examples"]) for r in rows] == [("model.ckpt-20", 360), ("model.ckpt-40", 360)]
    assert [r["accuracy"] for r in rows] == pytest.approx([numpy_accuracy(p, ema=True) for p in saved], abs=1e-6)
    wrong = run_cli("watch", str(model_dir), *META, "--data", str(data), "--feature", "pixels:8,8:float32",
                    "--label", "label", "--db", sqlite_url(db), "--once", "--name", "wrong")
    message = (f"--data {data}: the features are [8, 8] per example, but the input x-input:0 takes [?, 64] "
               "(batch first)")
    one_line_error(wrong, message)
