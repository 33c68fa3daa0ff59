"""A pool of evaluators sharing one PostgreSQL database (a real server, tests/pg.py): every checkpoint
of every run evaluated exactly once, work shared, a killed worker's checkpoint taken over, the
server stopped and started again mid-run, runs found under --root as they come and go."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import time
from datetime import datetime
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import pg
from tests.conftest import Daemon, cli_env, read_rows, run_cli, saved_by, slow_task, start_trainer, train, wait_for

pytestmark = pytest.mark.slow


def started(daemon: Daemon) -> list[tuple[str, str]]:
    """(model_dir, checkpoint) of every evaluation this worker began (debug log)."""
    return [(e["model_dir"], e["checkpoint"]) for e in daemon.events() if e["event"] == "evaluation started"]


def test_three_workers_three_runs_every_checkpoint_once(tmp_path: Path, pg_url: str, daemons: list[Daemon]) -> None:
    runs = [tmp_path / f"run{i}" for i in range(3)]
    for run in runs:
        run.mkdir()
    workers = [Daemon(runs[0], pg_url, *map(str, runs[1:]), "--log-level", "debug", "--rescan", "2").start()
               for _ in range(3)]
    daemons.extend(workers)
    for worker in workers:
        worker.wait_ready()
    trainers = [start_trainer(run, "--steps", "300", "--save-every", "20", "--max-to-keep", "50") for run in runs]
    saved = {str(run): saved_by(trainer) for run, trainer in zip(runs, trainers)}
    expected = sum(len(names) for names in saved.values())
    wait_for(lambda: len(read_rows(pg_url)) >= expected, timeout=180, message=f"{expected} rows")
    time.sleep(2)  # any late duplicate would land now
    listing = json.loads(run_cli("workers", "--db", pg_url, "--format", "json").stdout)
    assert len(listing) == 3 and all(w["alive"] for w in listing)
    assert sorted(listing[0]["model_dirs"]) == sorted(str(run.resolve()) for run in runs)
    for worker in workers:
        assert worker.stop() == 0
    rows = read_rows(pg_url)
    keys = [(r["model_dir"], r["checkpoint"]) for r in rows]
    assert len(keys) == len(set(keys)) == expected  # exactly one row per checkpoint
    assert {r["status"] for r in rows} == {"ok"}
    evaluations = [key for worker in workers for key in started(worker)]
    assert Counter(evaluations).most_common(1)[0][1] == 1  # none evaluated twice
    assert all(started(worker) for worker in workers)  # every worker did some of the work
    assert json.loads(run_cli("workers", "--db", pg_url, "--format", "json").stdout) == []  # they left


def test_a_killed_worker_checkpoint_is_taken_over_and_recorded_once(tmp_path: Path, trained_dir: Path, pg_url: str,
                                                                     daemons: list[Daemon]) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    task = slow_task(tmp_path, seconds_per_batch=0.5, batches=10)  # 5 s per checkpoint
    first = Daemon(model_dir, pg_url, "--lease", "4", "--log-level", "debug", task=task).start()
    daemons.append(first)
    first.wait_event("evaluation started", timeout=120)
    second = Daemon(model_dir, pg_url, "--lease", "4", "--log-level", "debug", task=task).start()
    daemons.append(second)
    second.wait_ready()
    first.stop(signal.SIGKILL)  # mid-evaluation: its claim stays behind
    # The checkpoint it was evaluating: begun, no row (a slow start of the second may let it finish one).
    recorded = {r["checkpoint"] for r in read_rows(pg_url)}
    (victim,) = [key for key in started(first) if key[1] not in recorded]
    rows = second.wait_rows(3, timeout=180)
    assert second.stop() == 0
    assert sorted(r["checkpoint"] for r in rows) == ["model.ckpt-20", "model.ckpt-40", "model.ckpt-60"]
    assert {r["status"] for r in rows} == {"ok"}
    assert victim in started(second)  # the dead worker's checkpoint, evaluated again by the living


@pytest.fixture
def own_server() -> Iterator[Any]:
    """A server of this test's own: it is stopped and started again."""
    if pg.binaries() is None:
        pytest.skip("PostgreSQL's server is not installed")
    yield from pg.start_server()


def away(server: Any, seconds: float) -> None:
    """The PostgreSQL server stopped for `seconds`, then started again and accepting."""
    server.stop("fast")
    time.sleep(seconds)
    server.start()
    pg.wait_accepting(server)


def rows_for_every_save(url: str, runs: list[Path], trainers: list[Any], *, saving: float,
                        evaluating: float) -> dict[str, list[str]]:
    """Once the trainers are done, wait for a row of every checkpoint they saved; model_dir -> names."""
    saved = {str(run.resolve()): saved_by(trainer, timeout=saving) for run, trainer in zip(runs, trainers)}
    expected = sum(len(names) for names in saved.values())
    wait_for(lambda: len(read_rows(url)) >= expected, timeout=evaluating, message=f"{expected} rows")
    return saved


def test_the_server_away_for_20_seconds_mid_run(tmp_path: Path, own_server: Any, daemons: list[Daemon]) -> None:
    """The workers wait, reconnect and finish: nothing lost, nothing doubled."""
    url = own_server.create_database()
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run.mkdir()
    workers = [Daemon(runs[0], url, str(runs[1]), "--rescan", "2", "--lease", "30").start() for _ in range(2)]
    daemons.extend(workers)
    for worker in workers:
        worker.wait_ready()
    trainers = [start_trainer(run, "--steps", "400", "--save-every", "20", "--max-to-keep", "50", "--delay", "0.3")
                for run in runs]
    wait_for(lambda: len(read_rows(url)) >= 4, timeout=120, message="rows before the outage")
    away(own_server, 20)
    saved = rows_for_every_save(url, runs, trainers, saving=180, evaluating=240)
    time.sleep(2)
    for worker in workers:
        assert worker.process is not None and worker.process.poll() is None  # never crashed
        assert worker.stop() == 0
    rows = read_rows(url)
    keys = [(r["model_dir"], r["checkpoint"]) for r in rows]
    assert len(keys) == len(set(keys)) == sum(len(names) for names in saved.values())
    assert sorted(keys) == sorted((d, name) for d, names in saved.items() for name in names)
    waited = [e for w in workers for e in w.events() if "will retry" in e["event"] or "will try again" in e["event"]]
    assert waited  # they did notice the outage


def test_root_finds_runs_as_they_appear_and_forgets_those_removed(tmp_path: Path, db: Path,
                                                                   daemons: list[Daemon]) -> None:
    root = tmp_path / "sweep"
    root.mkdir()
    train(root / "lr-0.1" / "model", steps=40, save_every=20)
    daemon = Daemon(root, db, "--rescan", "1")
    daemon.command[daemon.command.index(str(root))] = "--root"
    daemon.command.insert(daemon.command.index("--root") + 1, str(root))
    daemon.start()
    daemons.append(daemon)
    wait_for(lambda: len(read_rows(db)) >= 2, timeout=120, message="the first run's rows")
    train(root / "lr-0.3" / "model", steps=60, save_every=20)  # a run that starts later
    wait_for(lambda: len(read_rows(db)) >= 5, timeout=120, message="the second run's rows")
    shutil.rmtree(root / "lr-0.1")
    daemon.wait_event("model directory gone; no longer served", timeout=60)
    assert daemon.stop() == 0
    by_run = Counter(Path(r["model_dir"]).parent.name for r in read_rows(db))
    assert by_run == {"lr-0.1": 2, "lr-0.3": 3}  # rows outlive their run's directory
    assert not any("export" in r["model_dir"] or "eval" in r["model_dir"] for r in read_rows(db))


def test_root_notices_a_new_run_within_a_moment(tmp_path: Path, db: Path, daemons: list[Daemon]) -> None:
    """--rescan 300: a run created under the root is served when its state file appears (the root
    is watched), not minutes later at the next re-scan."""
    root = tmp_path / "sweep"
    root.mkdir()
    daemon = Daemon(root, db, "--rescan", "300")
    daemon.command[daemon.command.index(str(root))] = "--root"
    daemon.command.insert(daemon.command.index("--root") + 1, str(root))
    daemons.append(daemon.start())
    daemon.wait_ready()
    time.sleep(1)
    train(root / "lr-0.3" / "model", steps=60, save_every=20)
    written = (root / "lr-0.3" / "model" / "checkpoint").stat().st_mtime
    served = daemon.wait_event("serving this model directory", timeout=30)
    noticed = datetime.fromisoformat(served["timestamp"].replace("Z", "+00:00")).timestamp() - written
    assert noticed < 5, noticed  # the trainer's first state file came earlier still
    wait_for(lambda: len(read_rows(db)) >= 3, timeout=60, message="the new run's rows")
    assert daemon.stop() == 0
    assert sorted(r["step"] for r in read_rows(db)) == [20, 40, 60]


def _faketime_env(offset: str) -> dict[str, str]:
    """The environment that puts a process's clock `offset` off (libfaketime, Debian's faketime
    package), set directly rather than through the `faketime` launcher, which forks and would take
    the signals meant for the evaluator."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")) + sorted(glob.glob("/usr/lib*/faketime/libfaketimeMT.so.1"))
    if not found:
        if os.environ.get("EVALUATOR_REQUIRE_FAKETIME"):
            raise AssertionError("libfaketime is not installed (.ci/run installs Debian's faketime)")
        pytest.skip("libfaketime is not installed")
    # Only the wall clock is off, as on a machine without NTP: with the monotonic clock faked too,
    # libfaketime's pthread_cond_timedwait never returns, and every timed wait (the heartbeat's) hangs.
    return cli_env(LD_PRELOAD=found[0], FAKETIME=offset, FAKETIME_DONT_FAKE_MONOTONIC="1")


def test_a_worker_whose_clock_is_ahead_takes_no_live_claim(tmp_path: Path, pg_url: str, daemons: list[Daemon]) -> None:
    """A worker two minutes ahead (no NTP) beside a normal one, --lease 30: by its own clock every
    live claim has expired. Claims are judged by the database's clock, so no checkpoint is
    evaluated by both."""
    model_dir = tmp_path / "model"
    train(model_dir, steps=160, save_every=20, max_to_keep=10, relative_paths=True)
    task = slow_task(tmp_path, seconds_per_batch=0.4, batches=5)  # 2 s per checkpoint
    normal = Daemon(model_dir, pg_url, "--lease", "30", "--log-level", "debug", task=task)
    ahead = Daemon(model_dir, pg_url, "--lease", "30", "--log-level", "debug", task=task, env=_faketime_env("+120s"))
    for worker in (normal, ahead):
        daemons.append(worker.start())
    for worker in (normal, ahead):
        worker.wait_ready(timeout=180)
    rows = normal.wait_rows(8, timeout=240)
    time.sleep(3)  # a late duplicate evaluation would show now
    listing = json.loads(run_cli("workers", "--db", pg_url, "--format", "json").stdout)
    assert len(listing) == 2 and all(w["alive"] and w["heartbeat_age_s"] < 31 for w in listing), listing
    assert normal.stop() == 0 and ahead.stop() == 0
    rows = read_rows(pg_url)
    assert sorted(r["step"] for r in rows) == list(range(20, 161, 20)) and {r["status"] for r in rows} == {"ok"}
    evaluations = started(normal) + started(ahead)
    assert Counter(evaluations).most_common(1)[0][1] == 1, Counter(evaluations)  # none evaluated twice
    assert started(ahead), "the skewed worker did none of the work: the test proves nothing"


def _points(summary_dir: Path) -> Counter[tuple[int, str]]:
    """How many times each (step, tag) is in a directory's TensorBoard event files."""
    import tensorflow as tf

    found: Counter[tuple[int, str]] = Counter()
    for path in sorted(glob.glob(str(summary_dir / "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    found[(event.step, value.tag)] += 1
        except tf.errors.DataLossError:
            continue
    return found


def test_a_pool_through_skew_kill_and_a_server_restart_is_one_system(tmp_path: Path, own_server: Any,
                                                                     daemons: list[Daemon]) -> None:
    """Three workers over three live runs: one with its clock two minutes ahead, one killed with -9
    mid-evaluation (and started again, as systemd would), the PostgreSQL server restarted once. Every
    checkpoint one row, evaluated once (the killed worker's at most twice); per run, export/best holds
    exactly --keep-best checkpoints, the best first as `report --best` says; one TensorBoard point
    per checkpoint and metric."""
    url = own_server.create_database()
    runs = [tmp_path / f"run{i}" for i in range(3)]
    for run in runs:
        run.mkdir()
    task = slow_task(tmp_path, seconds_per_batch=0.25, batches=4)  # 1 s per checkpoint
    args = (url, *map(str, runs[1:]), "--lease", "10", "--keep-best", "2", "--log-level", "debug", "--rescan", "2")
    normal = Daemon(runs[0], *args, task=task)
    ahead = Daemon(runs[0], *args, task=task, env=_faketime_env("+120s"))
    victim = Daemon(runs[0], *args, task=task)
    workers = [normal, ahead, victim]
    for worker in workers:
        daemons.append(worker.start())
    for worker in workers:
        worker.wait_ready(timeout=180)
    trainers = [start_trainer(run, "--steps", "300", "--save-every", "20", "--max-to-keep", "50", "--delay", "0.4")
                for run in runs]
    victim.wait_event("evaluation started", timeout=120)
    victim.stop(signal.SIGKILL)
    recorded = {(r["model_dir"], r["checkpoint"]) for r in read_rows(url)}
    killed = [key for key in started(victim) if key not in recorded]
    assert len(killed) == 1, "the worker was not killed mid-evaluation: the test proves nothing"
    again = Daemon(runs[0], *args, task=task)
    daemons.append(again.start())
    workers.append(again)
    wait_for(lambda: len(read_rows(url)) >= 8, timeout=180, message="rows before the restart")
    away(own_server, 4)
    saved = rows_for_every_save(url, runs, trainers, saving=240, evaluating=300)
    time.sleep(3)  # a late duplicate, a last export or point, would land now
    for worker in (normal, ahead, again):
        assert worker.process is not None and worker.process.poll() is None  # never crashed
        assert worker.stop() == 0

    rows = read_rows(url)
    keys = [(r["model_dir"], r["checkpoint"]) for r in rows]
    assert sorted(keys) == sorted((d, name) for d, names in saved.items() for name in names)  # one row each
    assert {r["status"] for r in rows} == {"ok"}
    evaluations = Counter(key for worker in workers for key in started(worker))
    twice = {key for key, count in evaluations.items() if count > 1}
    assert twice <= set(killed) and max(evaluations.values()) <= 2, evaluations
    assert started(ahead), "the skewed worker did none of the work: the test proves nothing"
    report = json.loads(run_cli("report", "--db", url, "--best", "--format", "json").stdout)
    for run in runs:
        model_dir = str(run.resolve())
        own = [r for r in rows if r["model_dir"] == model_dir]
        ranked = sorted(own, key=lambda r: (-r["accuracy"], r["step"]))
        (best,) = [r for r in report if r["model_dir"] == model_dir]
        export = run / "export" / "best"
        assert tf_latest(export) == best["checkpoint"] == ranked[0]["checkpoint"]
        assert sorted(p.name[: -len(".index")] for p in export.glob("*.index")) == sorted(
            r["checkpoint"] for r in ranked[:2])
        manifest = json.loads((export / "best.json").read_text())
        assert [k["checkpoint"] for k in manifest["kept"]] == [r["checkpoint"] for r in ranked[:2]]
        assert not list(export.glob(".*"))  # no temporary file left by the killed worker
        points = _points(run / "eval")
        assert set(points) == {(r["step"], tag) for r in own for tag in ("accuracy", "loss")}
        assert set(points.values()) == {1}, [key for key, count in points.items() if count > 1]


def tf_latest(directory: Path) -> str | None:
    """What `tf.train.latest_checkpoint` names in `directory`, as a name."""
    import tensorflow as tf

    found = tf.train.latest_checkpoint(str(directory))
    return os.path.basename(found) if found else None
