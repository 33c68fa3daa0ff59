"""Shared test helpers: the digits trainer, a real `evaluator watch` subprocess, and database reads.

Rows are read with the standard library's sqlite3, independently of evaluator.store.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
DIGITS_TASK = f"{DIGITS / 'task.py'}:TASK"


def _load_trainer() -> Any:
    spec = importlib.util.spec_from_file_location("digits_train", DIGITS / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_trainer: Any = None


def trainer() -> Any:
    """examples/digits/train.py, imported once (it imports TensorFlow)."""
    global _trainer
    if _trainer is None:
        _trainer = _load_trainer()
    return _trainer


def train(model_dir: Path, **kwargs: Any) -> list[str]:
    """Train the digits network into `model_dir` (small defaults: 3 checkpoints in ~1 s)."""
    kwargs.setdefault("steps", 60)
    kwargs.setdefault("save_every", 20)
    return trainer().train(str(model_dir), **kwargs)


def slow_task(directory: Path, seconds_per_batch: float, batches: int = 10) -> str:
    """A task file: the digits network whose graph sleeps `seconds_per_batch` in each of `batches`
    batches (a real TensorFlow op, tf.numpy_function), for tests that need a long evaluation."""
    path = directory / f"slow_task_{time.monotonic_ns()}.py"
    path.write_text(f"""
import sys, threading
sys.path.insert(0, {str(DIGITS)!r})
import numpy as np
import tensorflow as tf
import digits_data, digits_model

def _sleep(logits):
    # (a timed wait rather than time.sleep, which libfaketime's clock_nanosleep fails with EINVAL)
    threading.Event().wait({seconds_per_batch!r})
    return logits

class SlowTask:
    batch_size = -(-360 // {batches})

    def inference(self, features):
        logits = digits_model.inference(features)
        slow = tf.numpy_function(_sleep, [logits], tf.float32)
        return tf.ensure_shape(slow, logits.shape)

    def validation_data(self):
        return digits_data.validation()

TASK = SlowTask()
""")
    return f"{path}:TASK"


def start_trainer(model_dir: Path, *args: str) -> subprocess.Popen[str]:
    """examples/digits/train.py in its own process, as a training job runs beside the evaluator."""
    return subprocess.Popen([sys.executable, str(DIGITS / "train.py"), str(model_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cli_env())


def saved_by(trainer_process: subprocess.Popen[str], timeout: float = 120) -> list[str]:
    """Wait for the trainer to finish; the checkpoint names it saved, in order."""
    out, _ = trainer_process.communicate(timeout=timeout)
    assert trainer_process.returncode == 0
    return [os.path.basename(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("saved ")]


def sqlite_url(path: Path | str) -> str:
    """The URL of a SQLite file (a PostgreSQL URL is passed through: tests run on both)."""
    if isinstance(path, str) and "://" in path:
        return path
    return f"sqlite:///{path}"


def read_rows(db: Path | str, model_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """Every row of the evaluations table (optionally one model directory's), by id: with sqlite3,
    or psycopg for a PostgreSQL URL (never through evaluator.store)."""
    if isinstance(db, str):
        return _pg_rows(db, model_dir)
    if not db.exists():
        return []
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM evaluations"
        params: tuple[Any, ...] = ()
        if model_dir is not None:
            query += " WHERE model_dir = ?"
            params = (os.path.realpath(model_dir),)
        try:
            return [dict(row) for row in connection.execute(query + " ORDER BY id", params)]
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return []
            raise
    finally:
        connection.close()


def _pg_rows(url: str, model_dir: Path | str | None) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    query = "SELECT * FROM evaluations"
    params: tuple[Any, ...] = ()
    if model_dir is not None:
        query += " WHERE model_dir = %s"
        params = (os.path.realpath(model_dir),)
    with psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database,
                         row_factory=dict_row) as connection:
        try:
            return [dict(row) for row in connection.execute(query + " ORDER BY id", params)]
        except psycopg.errors.UndefinedTable:
            return []


def error_lines(stderr: str) -> list[str]:
    """The errors a command reported: `evaluator: error: X` lines, or, where it logs JSON, the
    `error` events (each line of a JSON log is an object) — X either way."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("evaluator: error: "):
            found.append(line[len("evaluator: error: "):])
        elif line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "error":
                found.append(event["error"])
    return found


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1,
             message: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


#: The default database's home for the commands the tests run: never the user's own
#: (~/.local/state/evaluator, where `scripts/demo` writes).
_STATE_HOME = tempfile.mkdtemp(prefix="evaluator-test-state-")
atexit.register(shutil.rmtree, _STATE_HOME, True)


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EVALUATOR_DB", None)
    env.pop("NOTIFY_SOCKET", None)
    env["XDG_STATE_HOME"] = _STATE_HOME
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m evaluator ARGS` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "evaluator", *args], capture_output=True, text=True,
        env=env or cli_env(), timeout=timeout, cwd=cwd or ROOT, stdin=subprocess.DEVNULL,
    )


class Daemon:
    """`evaluator watch` as a real subprocess, its JSON log written to a file the test reads."""

    def __init__(self, model_dir: Path, db: Path | str, *args: str, task: str = DIGITS_TASK,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.model_dir = model_dir
        self.db = db
        # Beside the SQLite file; with a PostgreSQL URL, beside the model directory.
        folder = db.parent if isinstance(db, Path) else Path(model_dir).parent
        self.log_path = log_path or folder / f"watch-{time.monotonic_ns()}.log"
        self.command = [sys.executable, "-m", "evaluator", "watch", str(model_dir), "--task", task,
                        "--db", sqlite_url(db), "--log-format", "json", *args]
        self.env = env or cli_env()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=self._log_file,
                                        stdin=subprocess.DEVNULL, env=self.env, cwd=ROOT)
        return self

    def events(self) -> list[dict[str, Any]]:
        """The JSON events logged so far (TensorFlow's own non-JSON lines skipped)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return found

    def wait_event(self, event: str, timeout: float = 90.0, **fields: Any) -> dict[str, Any]:
        def match() -> dict[str, Any] | None:
            self._check_alive()
            for entry in self.events():
                if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            return None

        return wait_for(match, timeout=timeout, message=f"event {event!r} {fields} in {self.log_path}")

    def wait_ready(self, timeout: float = 90.0) -> Daemon:
        self.wait_event("database ready", timeout=timeout)
        return self

    def wait_rows(self, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            self._check_alive()
            rows = read_rows(self.db, self.model_dir)
            return rows if len(rows) >= count else None

        return wait_for(enough, timeout=timeout, message=f"{count} rows in {self.db}")

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` and wait for the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log_file.close()
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"evaluator watch exited with {self.process.returncode}:\n{self.log_text()[-3000:]}"
            )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A private PostgreSQL server for the session (tests/pg.py). Missing server binaries skip the
    tests that need it, unless $EVALUATOR_REQUIRE_POSTGRES is set (CI): then they fail."""
    from tests import pg

    if pg.binaries() is None:
        if os.environ.get("EVALUATOR_REQUIRE_POSTGRES"):
            raise AssertionError("PostgreSQL's server is not installed (.ci/run installs it)")
        pytest.skip("PostgreSQL's server (initdb, pg_ctl) is not installed")
    yield from pg.start_server()


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    return str(pg_server.create_database())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "evaluations.db"


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; any still running at the end are killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with checkpoints at steps 20, 40 and 60 (relative paths, so copies work)."""
    model_dir = tmp_path_factory.mktemp("trained") / "model"
    train(model_dir, relative_paths=True)
    return model_dir
