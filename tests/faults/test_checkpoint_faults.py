"""Faults of checkpoints and the state file: deleted, corrupt, garbage, a burst, a graph that doesn't fit."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest
from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tests.conftest import (
    Daemon,
    read_rows,
    saved_by,
    slow_task,
    start_trainer,
    wait_for,
)
from tests.faults.conftest import copy_checkpoint, link_all, renamed_task, write_state

pytestmark = pytest.mark.slow


def test_fast_trainer_with_max_to_keep_2(tmp_path: Path, db: Path, daemons: list[Daemon],
                                         record_property: Callable[[str, object], None]) -> None:
    """Scenario 2a: a trainer faster than evaluation, with max_to_keep=2.

    Checkpoints are pinned on sight (tests/e2e/test_pins_watch.py holds the 200-of-200 target), so most
    or all are `ok`; one the trainer deletes before the watch sees it is `missing`. Either way one row
    each, never `failed`, and the newest `ok`."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db, task=slow_task(tmp_path, seconds_per_batch=0.05, batches=6)).start()
    daemons.append(daemon)
    daemon.wait_ready()
    saved = saved_by(start_trainer(model_dir, "--steps", "400", "--save-every", "4", "--max-to-keep", "2"))
    rows = daemon.wait_rows(len(saved), timeout=120)
    counts = Counter(r["checkpoint"] for r in rows)
    assert set(counts) == set(saved) and set(counts.values()) == {1}
    statuses = Counter(r["status"] for r in rows)
    assert set(statuses) <= {"ok", "missing"} and statuses["ok"] > 0
    assert {r["checkpoint"]: r["status"] for r in rows}[saved[-1]] == "ok"
    assert daemon.stop() == 0
    record_property("detail", f"{len(saved)} saved -> {statuses['ok']} ok, {statuses['missing']} missing, "
                              "0 failed, 0 doubled")


class DeleteDataOnOpen(FileSystemEventHandler):
    """When the evaluator opens a checkpoint's index, delete that checkpoint's data at once."""

    def __init__(self, model_dir: Path, victims: set[str]) -> None:
        self.model_dir = model_dir
        self.victims = victims
        self.deleted: list[str] = []

    def on_opened(self, event: FileSystemEvent) -> None:
        name = os.path.basename(os.fsdecode(event.src_path))
        prefix = name.removesuffix(".index")
        if name.endswith(".index") and prefix in self.victims:
            self.victims.discard(prefix)
            for data in self.model_dir.glob(prefix + ".data-*"):
                data.unlink()
            self.deleted.append(prefix)


def test_data_deleted_while_the_checkpoint_is_read(tmp_path: Path, trained_dir: Path, db: Path,
                                                   daemons: list[Daemon],
                                                   record_property: Callable[[str, object], None]) -> None:
    """Scenario 2b: the data file deleted while the checkpoint is being read (between index and data)"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    names = [f"model.ckpt-{step}" for step in range(100, 2100, 100)]
    for name in names:
        copy_checkpoint(trained_dir, "model.ckpt-60", model_dir, name)
    victims = set(names[1::2])
    handler = DeleteDataOnOpen(model_dir, set(victims))
    observer = Observer()
    observer.schedule(handler, str(model_dir), recursive=False, event_filter=[FileOpenedEvent])
    observer.start()
    try:
        daemon = Daemon(model_dir, db).start()
        daemons.append(daemon)
        daemon.wait_ready()
        write_state(model_dir, names)
        rows = daemon.wait_rows(len(names))
    finally:
        observer.stop()
        observer.join()
    assert daemon.stop() == 0
    status = {r["checkpoint"]: r["status"] for r in rows}
    assert len(rows) == len(names) and all(status[n] == "ok" for n in names if n not in victims)
    # Deleted after its index was opened: `missing` if the data was gone when the restore read it,
    # `ok` if the restore had it open already. Never `failed`, never a crash.
    assert {status[n] for n in victims} <= {"ok", "missing"}
    missing = sum(status[n] == "missing" for n in victims)
    record_property("detail", f"data of {len(handler.deleted)} checkpoints deleted right after their index "
                              f"was opened: {missing} missing, {len(victims) - missing} ok (read in time), 0 failed")


def test_corrupt_checkpoints(tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon],
                             record_property: Callable[[str, object], None]) -> None:
    """Scenario 3: a truncated .data file, a zero-byte .index, random bytes in the .index"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    damage = {
        "model.ckpt-100": lambda p: p.with_name(p.name + ".data-00000-of-00001").write_bytes(
            p.with_name(p.name + ".data-00000-of-00001").read_bytes()[:100]),
        "model.ckpt-200": lambda p: p.with_name(p.name + ".index").write_bytes(b""),
        "model.ckpt-300": lambda p: p.with_name(p.name + ".index").write_bytes(os.urandom(2000)),
    }
    for name, corrupt in damage.items():
        copy_checkpoint(trained_dir, "model.ckpt-60", model_dir, name)
        corrupt(model_dir / name)
    copy_checkpoint(trained_dir, "model.ckpt-60", model_dir, "model.ckpt-400")
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_ready()
    write_state(model_dir, [*damage, "model.ckpt-400"])
    rows = {r["checkpoint"]: r for r in daemon.wait_rows(4)}
    for name in damage:
        row = rows[name]
        assert row["status"] == "failed" and row["accuracy"] is None
        assert row["error"].startswith(f"cannot restore {name}: ") and "\n" not in row["error"]
        assert "Graph execution error" not in row["error"]
    assert rows["model.ckpt-400"]["status"] == "ok"
    # It goes on: a good checkpoint written afterwards is evaluated too.
    copy_checkpoint(trained_dir, "model.ckpt-60", model_dir, "model.ckpt-500")
    write_state(model_dir, [*damage, "model.ckpt-400", "model.ckpt-500"])
    assert daemon.wait_rows(5)[-1]["status"] == "ok"
    assert daemon.stop() == 0
    record_property("detail", " | ".join(rows[n]["error"] for n in damage))


def test_garbage_state_files(tmp_path: Path, trained_dir: Path, db: Path, daemons: list[Daemon],
                             record_property: Callable[[str, object], None]) -> None:
    """Scenario 4: a garbage `checkpoint` state file: random bytes, empty, outside paths, a path to nothing"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db, "--rescan", "0.5", "--missing-grace", "1").start()
    daemons.append(daemon)
    daemon.wait_ready()
    state = model_dir / "checkpoint"

    def warned(count: int) -> None:
        wait_for(lambda: sum(e["event"] == "state file unreadable; waiting for a valid one"
                             for e in daemon.events()) >= count, timeout=30, message=f"{count} warnings")

    state.write_bytes(os.urandom(300))
    warned(1)
    state.write_bytes(b"")
    warned(2)
    write_state(model_dir, ["/etc/passwd"])
    daemon.wait_event("state file lists a path outside the model directory; ignored", path="/etc/passwd")
    write_state(model_dir, ["model.ckpt-999"])  # a path to nothing: waited for (a copy may bring it)
    time.sleep(2)
    assert read_rows(db) == []
    assert daemon.process is not None and daemon.process.poll() is None

    copy_checkpoint(trained_dir, "model.ckpt-60", model_dir, "model.ckpt-1000")
    write_state(model_dir, ["model.ckpt-999", "model.ckpt-1000"])  # valid again: it recovers
    rows = {r["checkpoint"]: r for r in daemon.wait_rows(2)}
    assert rows["model.ckpt-1000"]["status"] == "ok"
    # a newer checkpoint is there and the grace is over: the path to nothing is `missing`
    assert rows["model.ckpt-999"]["status"] == "missing"
    assert any(e["event"] == "state file readable again" for e in daemon.events())
    assert daemon.stop() == 0
    record_property("detail", "random bytes, empty: warned and waited; /etc/passwd ignored; "
                              "a path to nothing: waited for, `missing` once a newer one was there; a valid file: evaluated")


def test_a_burst_of_200_checkpoints(tmp_path: Path, staged: Path, db: Path, daemons: list[Daemon],
                                    record_property: Callable[[str, object], None]) -> None:
    """Scenario 8: a burst of 200 checkpoints, the state file rewritten 200 times in about a second"""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    daemon = Daemon(model_dir, db).start()
    daemons.append(daemon)
    daemon.wait_ready()
    names = link_all(staged, model_dir)  # all files in place at once
    assert names == [f"model.ckpt-{step}" for step in range(1, 201)]
    started = time.monotonic()
    for count in range(1, 201):
        write_state(model_dir, names[:count])
    rewrite_seconds = time.monotonic() - started
    rows = daemon.wait_rows(200, timeout=180)
    assert daemon.stop() == 0
    assert Counter(r["checkpoint"] for r in rows) == Counter(names)  # all 200, each once
    assert [r["step"] for r in rows] == list(range(1, 201))  # oldest step first
    assert all(r["status"] == "ok" for r in rows)
    passes = sum(e["event"] == "checkpoint detected" for e in daemon.events())
    record_property("detail", f"200 rewrites in {rewrite_seconds:.2f} s -> 200 rows, each once, in step "
                              f"order ({passes} detections)")


def test_a_task_that_does_not_fit_the_checkpoints(tmp_path: Path, trained_dir: Path, db: Path,
                                                  daemons: list[Daemon],
                                                  record_property: Callable[[str, object], None]) -> None:
    """Scenario 9: a task whose graph does not match the checkpoint (a renamed layer)"""
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    daemon = Daemon(model_dir, db, "--rescan", "0.5", task=renamed_task(tmp_path)).start()
    daemons.append(daemon)
    rows = daemon.wait_rows(3)
    time.sleep(2)  # several re-scans: no retry loop, no crash
    assert daemon.process is not None and daemon.process.poll() is None
    assert daemon.stop() == 0
    rows = read_rows(db)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"failed"}
    assert "checkpoint lacks 4 variable(s) the graph needs: encoder/layer1/" in rows[0]["error"]
    assert "it has: global_step, layer1/biases" in rows[0]["error"]
    record_property("detail", rows[0]["error"][:110] + "…")
