"""sources/remote.py against real servers on loopback: moto's S3 server and gcp-storage-emulator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evaluator.errors import CheckpointDeferred, ConfigError, ModelDirError, StateFileError
from evaluator.sources import open_source
from evaluator.sources import remote
from tests.conftest import DIGITS_TASK, Daemon, cli_env, read_rows, run_cli, slow_task, sqlite_url, wait_for
from tests.objectstore import client, gcs_server, s3_server, sync_upload

NAMES = ["model.ckpt-20", "model.ckpt-40", "model.ckpt-60"]


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    with s3_server() as env:
        yield env


@pytest.fixture(scope="module")
def gcs() -> Iterator[dict[str, str]]:
    with gcs_server() as env:
        yield env


@pytest.fixture
def s3_env(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(remote, "_filesystems", {})
    monkeypatch.setattr(remote, "_stagings", {})
    return s3


def _bucket(fs: Any, name: str) -> str:
    if not fs.exists(name):
        fs.mkdir(name)
    return name


def test_urls() -> None:
    assert remote.is_remote("s3://b/p") and remote.is_remote("gs://b") and not remote.is_remote("/data/s3:")
    assert remote.normalize("s3://b/runs//a/") == "s3://b/runs/a"
    assert remote.normalize("gs://b/") == "gs://b" and remote.normalize("gcs://b/x") == "gs://b/x"
    with pytest.raises(ConfigError):
        remote.normalize("s3:///nobucket")


def test_complete_only_when_every_shard_is_there_and_stable(s3_env: dict[str, str], trained_dir: Path) -> None:
    fs = client("s3://x", s3_env)
    bucket = _bucket(fs, "complete")
    source = open_source(f"s3://{bucket}/run/", weight_files=False, poll_interval=0.05)
    assert source.location == f"s3://{bucket}/run"
    assert source.ensure() and source.listed().checkpoints == []
    fs.put_file(str(trained_dir / "checkpoint"), f"{bucket}/run/checkpoint")
    source.refresh()
    listed = source.listed().checkpoints
    assert [c.name for c in listed] == NAMES and listed[0].path == f"s3://{bucket}/run/model.ckpt-20"
    ckpt = listed[0]
    assert not source.started(ckpt) and not source.complete(ckpt)
    fs.put_file(str(trained_dir / "model.ckpt-20.index"), f"{bucket}/run/model.ckpt-20.index")  # index first
    source.refresh()
    source.refresh()
    assert source.started(ckpt) and not source.complete(ckpt)  # no shard yet
    for shard in sorted(trained_dir.glob("model.ckpt-20.data-*")):
        fs.put_file(str(shard), f"{bucket}/run/{shard.name}")
    source.refresh()
    assert not source.complete(ckpt)  # seen once: its size may still change
    source.refresh()
    assert source.complete(ckpt)
    etag = fs.info(f"{bucket}/run/model.ckpt-20.index")["ETag"].strip('"')
    assert source.fingerprint(ckpt) == etag
    assert [c.name for c in source.found({"model.ckpt"})] == ["model.ckpt-20"]
    held = source.hold(ckpt)
    staged = Path(held.path).parent
    assert staged.parent == Path(source.stage_dir) and str(staged).startswith(str(Path(os.environ["XDG_CACHE_HOME"])))
    for name, handle in held.files.items():
        assert handle.read() == (trained_dir / name).read_bytes()
    assert source.staging.used > 0
    held.close()
    assert staged.exists() and source.pin(ckpt)  # the pin stays until the row is written
    fs.rm([f"{bucket}/run/{p.name}" for p in trained_dir.glob("model.ckpt-20.*") if ".meta" not in p.name])  # max_to_keep
    source.refresh()
    source.refresh()
    assert source.complete(ckpt) and source.fingerprint(ckpt) == etag  # the staged copy holds it
    source.hold(ckpt).close()
    source.done(ckpt)
    assert not staged.exists() and source.staging.used == 0 and not source.complete(ckpt)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_a_staged_copy_is_adopted_after_a_crash(s3_env: dict[str, str], trained_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole staged copy left by a process that is gone is the pin of the next one, even after
    training deleted its objects; a download cut short is removed; a live process's copy is left."""
    fs = client("s3://x", s3_env)
    bucket = _bucket(fs, "adopt")
    for name in ["checkpoint", *(p.name for p in trained_dir.glob("model.ckpt-*"))]:
        fs.put_file(str(trained_dir / name), f"{bucket}/run/{name}")
    first = open_source(f"s3://{bucket}/run", weight_files=False, poll_interval=0.05)
    ckpt = first.listed().checkpoints[0]
    etag = first.fingerprint(ckpt)
    staged = Path(first.hold(ckpt).close() or first._staged[ckpt.name].directory)
    size = first.staging.used
    dead = _dead_pid()
    crashed = staged.rename(staged.with_name(f"{staged.name.rsplit('.', 1)[0]}.{dead}"))  # killed -9
    partial = Path(remote.tempfile.mkdtemp(prefix="model.ckpt-40.", suffix=f".{dead}", dir=first.stage_dir))
    (partial / "model.ckpt-40.index").write_bytes(b"cut short")  # no manifest: the download never ended
    live = Path(remote.tempfile.mkdtemp(prefix="model.ckpt-60.", suffix=f".{os.getppid()}", dir=first.stage_dir))
    fs.rm([f"{bucket}/run/{p.name}" for p in trained_dir.glob("model.ckpt-20.*")])  # max_to_keep, meanwhile
    monkeypatch.setattr(remote, "_stagings", {})  # a new process
    second = open_source(f"s3://{bucket}/run", weight_files=False, poll_interval=0.05)
    assert [c.name for c in second.pinned()] == ["model.ckpt-20"] and second.staging.used == size
    assert not crashed.exists() and not partial.exists() and live.exists()
    assert second.complete(ckpt) and second.fingerprint(ckpt) == etag
    held = second.hold(ckpt)
    assert Path(held.path).parent.name.endswith(f".{os.getpid()}")
    assert {n: h.read() for n, h in held.files.items()} == {
        p.name: p.read_bytes() for p in trained_dir.glob("model.ckpt-20.*")}
    held.close()
    second.done(ckpt)
    assert second.pinned() == [] and second.staging.used == 0 and os.listdir(second.stage_dir) == [live.name]


def test_past_the_budget_a_checkpoint_waits(s3_env: dict[str, str], trained_dir: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    fs = client("s3://x", s3_env)
    bucket = _bucket(fs, "budget")
    for name in ["checkpoint", *(p.name for p in trained_dir.glob("model.ckpt-*"))]:
        fs.put_file(str(trained_dir / name), f"{bucket}/run/{name}")
    size = sum(p.stat().st_size for p in trained_dir.glob("model.ckpt-20.*"))
    source = open_source(f"s3://{bucket}/run", weight_files=False, poll_interval=0.05, pin_budget=size + 10)
    first, second = source.listed().checkpoints[:2]
    source.hold(first).close()
    with pytest.raises(CheckpointDeferred, match="pin-budget"):
        source.hold(second)
    source.done(first)
    source.hold(second).close()  # space freed: staged


def test_missing_bucket_and_missing_extra(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        remote.check("s3://no-such-bucket/run", wait=False)
    remote.check("s3://no-such-bucket/run", wait=True)
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(ConfigError, match=r"pip install 'evaluator\[gcs\]'"):
        remote.filesystem("gs://b/run")


def test_keras_weight_files(s3_env: dict[str, str], tmp_path: Path) -> None:
    fs = client("s3://x", s3_env)
    bucket = _bucket(fs, "keras")
    fs.pipe_file(f"{bucket}/run/model.03.weights.h5", b"weights")
    source = open_source(f"s3://{bucket}/run", weight_files=True, poll_interval=0.05)
    (ckpt,) = source.found(set())
    assert (ckpt.name, ckpt.name_step, ckpt.is_weight_file) == ("model.03.weights.h5", 3, True)
    assert source.complete(ckpt) and source.started(ckpt) and source.fingerprint(ckpt)
    held = source.hold(ckpt)
    assert held.path.endswith("/model.03.weights.h5") and Path(held.path).read_bytes() == b"weights"
    held.close()
    source.done(ckpt)
    assert not Path(held.path).exists()


def test_state_file_paths(s3_env: dict[str, str]) -> None:
    fs = client("s3://x", s3_env)
    bucket = _bucket(fs, "paths")
    fs.pipe_file(f"{bucket}/run/checkpoint", (
        'model_checkpoint_path: "/home/me/train/model.ckpt-30"\n'  # a v1 Saver's absolute path, synced
        f'all_model_checkpoint_paths: "s3://{bucket}/run/model.ckpt-10"\n'
        'all_model_checkpoint_paths: "model.ckpt-20"\n'
        'all_model_checkpoint_paths: "../other/model.ckpt-5"\n'
        'all_model_checkpoint_paths: "gs://elsewhere/model.ckpt-7"\n'
        'all_model_checkpoint_paths: "/home/me/train/model.ckpt-30"\n').encode())
    state = open_source(f"s3://{bucket}/run", weight_files=False, poll_interval=0.01).listed()
    assert [c.name for c in state.checkpoints] == ["model.ckpt-10", "model.ckpt-20", "model.ckpt-30"]
    assert state.ignored == [f"s3://{bucket}/run/../other/model.ckpt-5", "gs://elsewhere/model.ckpt-7"]


def test_an_unreadable_state_file(s3_env: dict[str, str]) -> None:
    fs = client("s3://x", s3_env)
    bucket = _bucket(fs, "garbage")
    fs.pipe_file(f"{bucket}/run/checkpoint", b"model_checkpoint_path: {not a path")
    source = open_source(f"s3://{bucket}/run", weight_files=False, poll_interval=0.01)
    for _ in range(2):  # parsed once; the same object gives the same answer
        with pytest.raises(StateFileError, match=f"cannot parse s3://{bucket}/run/checkpoint"):
            source.listed()
    fs.pipe_file(f"{bucket}/run/checkpoint", b'model_checkpoint_path: "model.ckpt-5"\n')
    source.refresh()
    assert [c.name for c in source.listed().checkpoints] == ["model.ckpt-5"]


def test_unreachable_storage_is_logged_and_listed_again(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    source = open_source("s3://away/run", weight_files=False, poll_interval=0.01)
    assert not source.ensure() and not source.refresh()
    out = capsys.readouterr().out
    assert out.count("cannot list the model directory's objects; will try again") == 1  # once, not per poll
    assert "Could not connect" in out


def test_root_discovery(s3_env: dict[str, str], trained_dir: Path) -> None:
    fs = client("s3://x", s3_env)
    bucket = _bucket(fs, "sweep")
    for run in ("lr1", "deep/lr2"):
        fs.put_file(str(trained_dir / "checkpoint"), f"{bucket}/sweep/{run}/checkpoint")
    fs.put_file(str(trained_dir / "checkpoint"), f"{bucket}/sweep/lr1/eval/checkpoint")  # own outputs: not a run
    assert remote.discover(f"s3://{bucket}/sweep", 3, False) == [f"s3://{bucket}/sweep/deep/lr2",
                                                                   f"s3://{bucket}/sweep/lr1"]
    assert remote.discover(f"s3://{bucket}/sweep", 1, False) == [f"s3://{bucket}/sweep/lr1"]


# -- end to end: `evaluator watch` on a bucket ----------------------------------------------------


def _local_accuracy(trained_dir: Path, tmp_path: Path) -> dict[str, float]:
    """The same checkpoints evaluated from a local copy."""
    local = tmp_path / "local"
    shutil.copytree(trained_dir, local)
    db = tmp_path / "local.db"
    result = run_cli("watch", str(local), "--task", DIGITS_TASK, "--db", sqlite_url(db), "--once",
                     "--no-summaries", "--keep-best", "0")
    assert result.returncode == 0, result.stderr
    return {r["checkpoint"]: r["accuracy"] for r in read_rows(db)}


def _rows(db: Path, url: str) -> list[dict[str, Any]]:
    return [r for r in read_rows(db) if r["model_dir"] == url]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_watch_a_bucket_written_in_a_sync_tools_order(scheme: str, request: pytest.FixtureRequest,
                                                      trained_dir: Path, tmp_path: Path) -> None:
    server = request.getfixturevalue("s3" if scheme == "s3" else "gcs")
    fs = client(f"{scheme}://x", server)
    bucket = _bucket(fs, f"watch-{scheme}")
    url = f"{scheme}://{bucket}/runs/a"
    db = tmp_path / "e.db"
    env = cli_env(**server, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"))
    daemon = Daemon(url, db, "--poll-interval", "0.2", env=env).start()  # type: ignore[arg-type]
    try:
        daemon.wait_ready()
        outputs = daemon.wait_event("a remote model directory: its outputs are written locally")
        assert outputs["summary_dir"].startswith(str(tmp_path / "data"))
        sync_upload(fs, trained_dir, f"{bucket}/runs/a", NAMES, index_first=scheme == "gs")
        rows = _wait_rows(daemon, db, url, len(NAMES))
    finally:
        assert daemon.stop() == 0
    expected = _local_accuracy(trained_dir, tmp_path)
    assert sorted((r["checkpoint"], r["status"]) for r in rows) == [(n, "ok") for n in NAMES]
    assert {r["checkpoint"]: r["accuracy"] for r in rows} == expected
    assert all(r["fingerprint"] for r in rows)
    assert os.listdir(tmp_path / "data" / "evaluator" / "runs" / f"{scheme}_{bucket}_runs_a" / "eval")
    staged = tmp_path / "cache" / "evaluator" / "staging" / f"{scheme}_{bucket}_runs_a"
    assert not staged.exists() or os.listdir(staged) == []  # each staged copy removed once recorded
    kept = tmp_path / "data" / "evaluator" / "runs" / f"{scheme}_{bucket}_runs_a" / "export" / "best"
    assert any(name.endswith(".index") for name in os.listdir(kept))


def _wait_rows(daemon: Daemon, db: Path, url: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon._check_alive()
        rows = _rows(db, url)
        if len(rows) >= count:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"{count} rows for {url}:\n{daemon.log_text()[-3000:]}")


@pytest.mark.slow
def test_a_staged_checkpoint_outlives_trainings_deletion(s3: dict[str, str], trained_dir: Path,
                                                         tmp_path: Path) -> None:
    """The objects of checkpoints waiting behind a slow evaluation are deleted (max_to_keep=1):
    their staged copies are evaluated, each `ok` with the local copy's accuracy."""
    fs = client("s3://x", s3)
    bucket = _bucket(fs, "rotate")
    url, db = f"s3://{bucket}/run", tmp_path / "e.db"
    env = cli_env(**s3, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"))
    task = slow_task(tmp_path, 0.3, batches=10)  # about 3 s an evaluation
    daemon = Daemon(url, db, "--poll-interval", "0.2", "--keep-best", "0", task=task, env=env).start()  # type: ignore[arg-type]
    staging = tmp_path / "cache" / "evaluator" / "staging" / f"s3_{bucket}_run"
    try:
        daemon.wait_ready()
        sync_upload(fs, trained_dir, f"{bucket}/run", NAMES, pause=0)
        wait_for(lambda: {d.split(".")[1] for d in os.listdir(staging)} >= {"ckpt-40", "ckpt-60"}
                 if staging.exists() else False, timeout=60, message="ckpt-40 and ckpt-60 staged")
        assert _rows(db, url) == []  # still on the first
        fs.rm([f"{bucket}/run/{p.name}" for p in trained_dir.glob("model.ckpt-[24]0.*")
               if fs.exists(f"{bucket}/run/{p.name}")])
        fs.pipe_file(f"{bucket}/run/checkpoint", b'model_checkpoint_path: "model.ckpt-60"\n')
        rows = _wait_rows(daemon, db, url, len(NAMES))
    finally:
        assert daemon.stop() == 0
    assert sorted((r["checkpoint"], r["status"]) for r in rows) == [(n, "ok") for n in NAMES]
    local = tmp_path / "local-slow.db"
    copy = tmp_path / "local"
    shutil.copytree(trained_dir, copy)
    result = run_cli("watch", str(copy), "--task", task, "--db", sqlite_url(local), "--once", "--keep-best", "0",
                     "--no-summaries")
    assert result.returncode == 0, result.stderr
    assert {r["checkpoint"]: r["accuracy"] for r in rows} == {r["checkpoint"]: r["accuracy"] for r in read_rows(local)}
    assert os.listdir(staging) == []


@pytest.mark.slow
def test_staged_checkpoints_outlive_a_crash(s3: dict[str, str], trained_dir: Path, tmp_path: Path) -> None:
    """The evaluator is killed (-9) with checkpoints staged but not recorded; training deletes their
    objects meanwhile. The next start adopts the staged copies: every checkpoint one `ok` row."""
    fs = client("s3://x", s3)
    bucket = _bucket(fs, "crash")
    url, db = f"s3://{bucket}/run", tmp_path / "e.db"
    env = cli_env(**s3, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"))
    task = slow_task(tmp_path, 0.3, batches=10)  # about 3 s an evaluation
    args = ("--poll-interval", "0.2", "--keep-best", "0")
    staging = tmp_path / "cache" / "evaluator" / "staging" / f"s3_{bucket}_run"

    def whole() -> set[str]:
        return {d.split(".")[1] for d in os.listdir(staging) if (staging / d / remote.MANIFEST).exists()}

    daemon = Daemon(url, db, *args, task=task, env=env).start()
    try:
        daemon.wait_ready()
        sync_upload(fs, trained_dir, f"{bucket}/run", NAMES, pause=0)
        wait_for(lambda: whole() >= {"ckpt-20", "ckpt-40", "ckpt-60"} if staging.exists() else False,
                 timeout=60, message="all three staged")
    finally:
        daemon.stop(signal.SIGKILL)
    recorded = {r["checkpoint"] for r in _rows(db, url)}
    assert recorded < set(NAMES)  # killed with work left
    fs.rm([f"{bucket}/run/{p.name}" for p in trained_dir.glob("model.ckpt-[24]0.*")
           if fs.exists(f"{bucket}/run/{p.name}")])  # training went on while it was down
    fs.pipe_file(f"{bucket}/run/checkpoint", b'model_checkpoint_path: "model.ckpt-60"\n')
    again = Daemon(url, db, *args, task=task, env=env).start()
    try:
        adopted = again.wait_event("staged copies adopted from an earlier process")
        rows = _wait_rows(again, db, url, len(NAMES))
    finally:
        assert again.stop() == 0
    assert sorted((r["checkpoint"], r["status"]) for r in rows) == [(n, "ok") for n in NAMES]
    assert set(adopted["checkpoints"]) >= set(NAMES) - recorded
    assert os.listdir(staging) == []


@pytest.mark.slow
def test_past_the_pin_budget_checkpoints_wait_and_are_not_lost(s3: dict[str, str], trained_dir: Path,
                                                               tmp_path: Path) -> None:
    fs = client("s3://x", s3)
    bucket = _bucket(fs, "tight")
    for file in trained_dir.iterdir():
        fs.put_file(str(file), f"{bucket}/run/{file.name}")
    url, db = f"s3://{bucket}/run", tmp_path / "e.db"
    env = cli_env(**s3, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"))
    daemon = Daemon(url, db, "--poll-interval", "0.2", "--pin-budget", "1000", env=env).start()  # type: ignore[arg-type]
    try:
        warning = daemon.wait_event("not staged: the staged copies would pass the budget; it waits for space",
                                    checkpoint="model.ckpt-20")
        assert "--pin-budget 1000" in warning["budget"]
        time.sleep(2)
        assert _rows(db, url) == []  # waiting, not missing
    finally:
        assert daemon.stop() == 0
    daemon = Daemon(url, db, "--poll-interval", "0.2", "--keep-best", "0", env=env).start()  # type: ignore[arg-type]
    try:
        rows = _wait_rows(daemon, db, url, len(NAMES))
    finally:
        assert daemon.stop() == 0
    assert sorted((r["checkpoint"], r["status"]) for r in rows) == [(n, "ok") for n in NAMES]


@pytest.mark.slow
def test_root_on_s3_once(s3: dict[str, str], trained_dir: Path, tmp_path: Path) -> None:
    fs = client("s3://x", s3)
    bucket = _bucket(fs, "root-once")
    for run in ("lr1", "lr2"):
        for file in trained_dir.iterdir():
            fs.put_file(str(file), f"{bucket}/sweep/{run}/{file.name}")
    db = tmp_path / "e.db"
    env = cli_env(**s3, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_DATA_HOME=str(tmp_path / "data"))
    result = run_cli("watch", "--root", f"s3://{bucket}/sweep/", "--task", DIGITS_TASK, "--db", sqlite_url(db),
                     "--once", "--poll-interval", "0.2", "--keep-best", "0", env=env)
    assert result.returncode == 0, result.stderr
    rows = read_rows(db)
    assert sorted((r["model_dir"], r["checkpoint"], r["status"]) for r in rows) == [
        (f"s3://{bucket}/sweep/{run}", name, "ok") for run in ("lr1", "lr2") for name in NAMES]
    report = run_cli("report", "--db", sqlite_url(db), "--model-dir", f"s3://{bucket}/sweep/lr1/", "--format", "json")
    assert report.returncode == 0 and len(json.loads(report.stdout)) == 3, report.stderr
    report = run_cli("report", "--db", sqlite_url(db), "--root", f"s3://{bucket}/sweep", "--format", "json")
    assert report.returncode == 0 and len(json.loads(report.stdout)) == 6, report.stderr


@pytest.mark.slow
def test_clear_errors(s3: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    env = cli_env(**s3)
    missing = run_cli("watch", "s3://no-such-bucket/run", "--task", DIGITS_TASK, "--db", sqlite_url(db), "--once",
                      env=env)
    assert missing.returncode == 2 and "bucket no-such-bucket" in missing.stderr
    assert "Traceback" not in missing.stderr
    blocked = tmp_path / "blocked" / "s3fs"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed')\n")
    no_extra = run_cli("watch", "s3://b/run", "--task", DIGITS_TASK, "--db", sqlite_url(db), "--once",
                       env={**env, "PYTHONPATH": os.pathsep.join([str(blocked.parent), env.get("PYTHONPATH", "")])})
    assert no_extra.returncode == 2 and "pip install 'evaluator[s3]'" in no_extra.stderr
    assert "Traceback" not in no_extra.stderr
    unreachable = run_cli("watch", "s3://b/run", "--task", DIGITS_TASK, "--db", sqlite_url(db), "--once",
                          env={**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"})
    assert unreachable.returncode == 75 and "cannot reach s3://b/run" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    done_file = run_cli("watch", "s3://b/run", "--task", DIGITS_TASK, "--db", sqlite_url(db), "--done-file", "DONE",
                        env=env)
    assert done_file.returncode == 2 and "--done-file is for a local model directory" in done_file.stderr
    assert not db.exists()
