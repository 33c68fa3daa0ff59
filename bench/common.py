"""What the bench's stages share: where things are, `watch` in a subprocess (`Watch`), waiting,
staging checkpoints and state files as a trainer writes them, and a few statistics."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from bench.run import Sizes

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
DIGITS_TASK = f"{DIGITS / 'task.py'}:TASK"
WORKLOAD_TASK = f"{ROOT / 'bench' / 'workload.py'}:TASK"
KERAS_WORKLOAD_TASK = f"{ROOT / 'bench' / 'keras_workload.py'}:TASK"

TARGETS = {
    "latency_median_ms": 100.0,
    "cost_ratio": 1.1,
    "memory_growth_mb": 10.0,
    "idle_percent_of_core": 1.0,
    "report_seconds": 0.5,
    "claim_ms": 5.0,
}

#: A row of the printed table: (measure, evaluator, baseline, target, met).
Row = tuple[str, str, str, str, str]


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


# -- a daemon under measurement --------------------------------------------------------------

class Watch:
    """`evaluator watch` in a subprocess, its log in a file, its rows read with sqlite3.

    With `tree` (the previous release's source, see bench/previous.py) it runs that code:
    PYTHONPATH=tree and a working directory outside the checkout (the database's folder)."""

    def __init__(self, model_dir: Path, db: Path, task: str, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), tree: Path | None = None) -> None:
        self.model_dir, self.db = model_dir, db
        self.log = db.with_suffix(".log")
        release = {"PYTHONPATH": str(tree)} if tree is not None else {}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "evaluator", "watch", str(model_dir), "--task", task,
             "--db", f"sqlite:///{db}", "--log-format", "json", "--device", "auto", *args],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"), stdin=subprocess.DEVNULL,  # noqa: SIM115
            cwd=db.parent if tree is not None else ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {}), **release})

    def wait_ready(self, timeout: float = 180) -> Watch:
        wait(lambda: '"database ready"' in self.log.read_text(errors="replace"), timeout, self, "start-up")
        return self

    def rows(self) -> list[dict[str, Any]]:
        if not self.db.exists():
            return []
        connection = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in connection.execute("SELECT * FROM evaluations ORDER BY id")]
        except sqlite3.OperationalError:
            return []
        finally:
            connection.close()

    def wait_rows(self, count: int, timeout: float = 600) -> list[dict[str, Any]]:
        wait(lambda: len(self.rows()) >= count, timeout, self, f"{count} rows")
        return self.rows()

    def rss_mb(self) -> float:
        return status_kb(self.process.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return status_kb(self.process.pid, "VmHWM") / 1024

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def wait(condition: Callable[[], bool], timeout: float, watch: Watch | None, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if watch is not None and watch.process.poll() is not None:
            raise RuntimeError(f"evaluator watch exited ({watch.process.returncode}); see {watch.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# -- checkpoints as a trainer writes them ----------------------------------------------------

def write_state(model_dir: Path, names: list[str]) -> float:
    """Rename a new state file into place, as TensorFlow does; returns the time it landed."""
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    temporary = model_dir / f"checkpoint.tmp{uuid.uuid4().hex}"
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, model_dir / "checkpoint")
    return time.time()


def link_checkpoint(source: Path, prefix: str, target: Path, name: str) -> None:
    for path in source.glob(prefix + ".*"):
        os.link(path, target / (name + path.name[len(prefix):]))


def digits_trainer() -> Any:
    """examples/digits/train.py as a module."""
    if str(DIGITS) not in sys.path:
        sys.path.insert(0, str(DIGITS))
    import train

    return train


def rss_over_checkpoints(staged: Path, prefix: str, family: str, model_dir: Path, task: str,
                         sizes: Sizes) -> tuple[dict[int, float], float]:
    """`watch`'s RSS (MB) after each mark of evaluated checkpoints, and its peak: one checkpoint
    linked under `family-1..N` (no disk, but N restores), listed a mark at a time."""
    names = [f"{family}-{i}" for i in range(1, sizes.memory_marks[-1] + 1)]
    for name in names:
        link_checkpoint(staged, prefix, model_dir, name)
    env = {"BENCH_WIDTH": sizes.width, "BENCH_EXAMPLES": str(sizes.memory_examples)}
    watch = Watch(model_dir, model_dir.with_suffix(".db"), task, env=env).wait_ready()
    samples = {}
    for mark in sizes.memory_marks:
        write_state(model_dir, names[:mark])
        watch.wait_rows(mark, timeout=1200)
        samples[mark] = watch.rss_mb()
    peak = watch.peak_rss_mb()
    watch.stop()
    return samples, peak


# -- figures ---------------------------------------------------------------------------------

def epoch(text: str | None) -> float:
    """A stored UTC time ("2026-11-23 12:00:00.123456") as seconds since the epoch."""
    assert text is not None
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def race(ours: Callable[[Any], Any], theirs: Callable[[Any], Any], listed: list[Any],
         rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per checkpoint of the evaluator and of a baseline, alternating on the same checkpoints."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for ckpt in listed:
            for run, spent in zip((ours, theirs), times):
                start = time.perf_counter()
                run(ckpt)
                spent.append(time.perf_counter() - start)
    return times
