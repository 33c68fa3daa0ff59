"""The evaluator's benchmark: how fast it notices, evaluates and reports, against what users run today.

    python -m bench                     # the full run (about ten minutes on 2 cores)
    python -m bench --smoke             # tiny sizes, about a minute: CI runs it so the bench can't rot
    python -m bench --only latency,report

Prints a table and writes the same figures as JSON (bench/out/results.json) and as a markdown
table (bench/out/results.md). The targets are those of the benchmark issue; bench/RESULTS.md
holds a run's figures with their explanation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
DIGITS_TASK = f"{DIGITS / 'task.py'}:TASK"
WORKLOAD_TASK = f"{ROOT / 'bench' / 'workload.py'}:TASK"
KERAS_WORKLOAD_TASK = f"{ROOT / 'bench' / 'keras_workload.py'}:TASK"
OUT = ROOT / "bench" / "out"
STAGES = ("latency", "idle", "cost", "memory", "report", "throughput", "poll", "keras", "metrics", "pool")

TARGETS = {
    "latency_median_ms": 100.0,
    "cost_ratio": 1.1,
    "memory_growth_mb": 10.0,
    "idle_percent_of_core": 1.0,
    "report_seconds": 0.5,
    "claim_ms": 5.0,
}


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; --smoke shrinks all of them."""

    latency_checkpoints: int = 30
    latency_spacing: float = 1.0
    baseline_interval: float = 10.0
    #: Checkpoints spaced 1.3 x the classic loop's interval, so it sees each (its own latency).
    classic_checkpoints: int = 6
    width: str = "2048,1024"
    examples: int = 10_000
    cost_checkpoints: int = 3
    cost_rounds: int = 5
    memory_marks: tuple[int, ...] = (10, 50, 100, 150, 200)
    memory_examples: int = 1000
    idle_seconds: float = 60.0
    #: `report` on a history this large and on one this small (4 model directories, 3 metrics a row).
    report_rows: int = 1_000_000
    report_small_rows: int = 1000
    report_repeats: int = 5
    #: The previous release's reports on the large history take seconds each: fewer runs.
    report_previous_repeats: int = 3
    #: Every row streamed (JSON, CSV, table) from a history this large.
    report_stream_rows: int = 100_000
    throughput_checkpoints: int = 300
    #: Saves of a fast trainer with max_to_keep=2, watched with events and with --poll.
    poll_checkpoints: int = 300
    poll_intervals: tuple[float, ...] = (1.0, 0.5, 0.1)
    #: Claims timed per backend; checkpoints of the realistic model shared by one, then two workers.
    pool_claims: int = 200
    pool_checkpoints: int = 24


SMOKE = Sizes(latency_checkpoints=3, latency_spacing=0.3, baseline_interval=0.5, classic_checkpoints=2,
              width="64,32", examples=500,
              cost_checkpoints=2, cost_rounds=2, memory_marks=(3, 6), memory_examples=100, idle_seconds=2.0,
              report_rows=2000, report_small_rows=200, report_repeats=1, report_previous_repeats=1,
              report_stream_rows=2000, throughput_checkpoints=15, poll_checkpoints=20,
              poll_intervals=(1.0,), pool_claims=20, pool_checkpoints=4)


# -- a daemon under measurement --------------------------------------------------------------

class Watch:
    """`evaluator watch` in a subprocess, its log in a file, its rows read with sqlite3."""

    def __init__(self, model_dir: Path, db: Path, task: str, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.model_dir, self.db = model_dir, db
        self.log = db.with_suffix(".log")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "evaluator", "watch", str(model_dir), "--task", task,
             "--db", f"sqlite:///{db}", "--log-format", "json", "--device", "auto", *args],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"), stdin=subprocess.DEVNULL,  # noqa: SIM115
            cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})

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
        return _status_kb(self.process.pid, "VmRSS") / 1024

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


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


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


def epoch(text: str | None) -> float:
    """A stored UTC time ("2026-11-23 12:00:00.123456") as seconds since the epoch."""
    assert text is not None
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def digits_trainer() -> Any:
    sys.path.insert(0, str(DIGITS))
    import train

    return train


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


# -- the measurements ------------------------------------------------------------------------

def measure_latency_and_idle(work: Path, sizes: Sizes) -> dict[str, Any]:
    """1. rename of the state file -> evaluation start, evaluator vs the classic loop; 4. idle CPU.

    First checkpoints come every `latency_spacing` seconds (the classic loop sees only some), then
    every 1.3 x its interval (it sees each one: its own latency). The evaluator is measured on all.
    """
    fast, slow = sizes.latency_checkpoints, sizes.classic_checkpoints
    staged = work / "staged-digits"
    digits_trainer().train(str(staged), steps=fast + slow, save_every=1, max_to_keep=fast + slow,
                           relative_paths=True)
    names = [f"model.ckpt-{i}" for i in range(1, fast + slow + 1)]
    model_dir = work / "latency"
    model_dir.mkdir()
    watch = Watch(model_dir, work / "latency.db", DIGITS_TASK).wait_ready()
    classic_log = work / "classic.jsonl"
    classic = subprocess.Popen([sys.executable, str(ROOT / "bench" / "baseline.py"), str(model_dir),
                                "--interval", str(sizes.baseline_interval), "--out", str(classic_log)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wait(lambda: classic_log.exists() and "ready" in classic_log.read_text(), 180, None, "the classic loop")
    renamed: dict[str, float] = {}
    for index, name in enumerate(names, start=1):
        link_checkpoint(staged, name, model_dir, name)
        renamed[name] = write_state(model_dir, names[max(0, index - 5):index])  # like max_to_keep=5
        time.sleep(sizes.latency_spacing if index <= fast else 1.3 * sizes.baseline_interval)
    rows = watch.wait_rows(len(names))
    time.sleep(sizes.baseline_interval + 1)
    classic.terminate()
    classic.wait()

    ours = [1000 * (epoch(r["started_at"]) - renamed[r["checkpoint"]]) for r in rows]
    theirs = {e["checkpoint"]: 1000 * (e["started_at"] - renamed[e["checkpoint"]])
              for e in map(json.loads, classic_log.read_text().splitlines()) if e["event"] == "evaluated"}
    spaced = [theirs[n] for n in names[fast:] if n in theirs]
    seen_fast = sum(n in theirs for n in names[:fast])

    before = watch.cpu_seconds()
    time.sleep(sizes.idle_seconds)
    idle_cpu = watch.cpu_seconds() - before
    rss_idle = watch.rss_mb()
    watch.stop()
    return {
        "latency": {
            "checkpoints": len(names), "spacing_s": sizes.latency_spacing,
            "evaluator_median_ms": statistics.median(ours), "evaluator_p95_ms": percentile(ours, 0.95),
            "evaluator_max_ms": max(ours), "evaluator_evaluated": len(rows),
            "classic_interval_s": sizes.baseline_interval,
            "classic_median_ms": statistics.median(spaced) if spaced else None,
            "classic_p95_ms": percentile(spaced, 0.95) if spaced else None,
            "classic_spaced_checkpoints": slow, "classic_spaced_evaluated": len(spaced),
            "classic_fast_checkpoints": fast, "classic_fast_evaluated": seen_fast,
        },
        "idle": {"seconds": sizes.idle_seconds, "cpu_seconds": idle_cpu,
                 "percent_of_core": 100 * idle_cpu / sizes.idle_seconds, "rss_mb": rss_idle},
    }


def measure_cost(work: Path, sizes: Sizes) -> dict[str, Any]:
    """2. restore + evaluate one checkpoint of the realistic model: evaluator vs a hand-written loop."""
    from bench import workload
    from bench.baseline import HandWritten
    from evaluator import checkpoints
    from evaluator.evaluation import Evaluation, Status
    from evaluator.models.device import select_device
    from evaluator.models.graph import GraphModel as EvalModel
    from evaluator.store import Store

    model_dir = work / "cost"
    workload.write_checkpoints(str(model_dir), sizes.cost_checkpoints)
    listed = checkpoints.read_state(str(model_dir)).checkpoints
    evaluator = EvalModel.build(workload.TASK, device="auto", batch_size=workload.TASK.batch_size)
    hand = HandWritten(workload.TASK, select_device("auto").config, workload.TASK.batch_size)
    agree = True
    for ckpt in listed:  # warm both up once
        outcome = evaluator.evaluate(ckpt)
        accuracy, _ = hand(ckpt.path)
        agree = agree and abs(outcome.metrics.accuracy - accuracy) < 1e-9
    ours, theirs = race(evaluator.evaluate, lambda ckpt: hand(ckpt.path), listed, sizes.cost_rounds)

    store = Store.open(f"sqlite:///{work / 'record.db'}", create=True)
    store.upgrade()
    record: list[float] = []
    claim: list[float] = []
    for index in range(30):
        now = datetime.now(timezone.utc)
        row = Evaluation(model_dir="/bench", checkpoint=f"m-{index}", step=index, status=Status.OK,
                         evaluated_at=now, accuracy=0.5, loss=1.0, examples=10, ema_source="tf1-names", fingerprint="f")
        start = time.perf_counter()
        store.claim(row.key, "bench", lease=90)
        claim.append(time.perf_counter() - start)
        start = time.perf_counter()
        store.record(row, owner="bench")
        record.append(time.perf_counter() - start)
    return {"cost": {
        "parameters": workload.parameters(), "examples": workload.examples(), "device": evaluator.device,
        "checkpoint_mb": sum(p.stat().st_size for p in model_dir.glob(listed[0].name + ".*")) / 2**20,
        "evaluator_s": statistics.median(ours), "handwritten_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs), "same_accuracy": agree,
        "restore_s": statistics.median(evaluator.evaluate(c).restore_seconds for c in listed),
        "record_row_ms": 1000 * statistics.median(record),
        "claim_ms": 1000 * statistics.median(claim),
    }}


def measure_metrics(work: Path, sizes: Sizes) -> dict[str, Any]:
    """9. five metrics on two validation sets: the evaluator against a hand-written loop computing the same."""
    from bench import workload
    from bench.baseline import HandWrittenMetrics
    from evaluator import checkpoints
    from evaluator.models.device import select_device
    from evaluator.models.graph import GraphModel

    model_dir = work / "metrics"
    workload.write_checkpoints(str(model_dir), sizes.cost_checkpoints)
    listed = checkpoints.read_state(str(model_dir)).checkpoints
    task = workload.METRICS_TASK
    evaluator = GraphModel.build(task, device="auto", batch_size=task.batch_size)
    hand = HandWrittenMetrics(task, select_device("auto").config, task.batch_size, workload.CLASSES)
    largest = 0.0
    for ckpt in listed:  # warm both up once; compare every value
        ours, theirs = evaluator.evaluate(ckpt).metrics.values, hand(ckpt.path)
        largest = max([largest] + [abs(ours[s][m] - theirs[s][m]) for s in theirs for m in theirs[s]])
    ours_s, theirs_s = race(evaluator.evaluate, lambda ckpt: hand(ckpt.path), listed, sizes.cost_rounds)
    return {"metrics": {
        "parameters": workload.parameters(), "examples": workload.examples(), "device": evaluator.device,
        "sets": len(task.validation_data()), "metrics": len(evaluator.suite.names),
        "evaluator_s": statistics.median(ours_s), "handwritten_s": statistics.median(theirs_s),
        "ratio": statistics.median(ours_s) / statistics.median(theirs_s), "largest_difference": largest,
    }}


def measure_pool(work: Path, sizes: Sizes) -> dict[str, Any]:
    """10. a claim (and its row) per checkpoint on SQLite and PostgreSQL; the throughput of one and of
    two `watch` workers sharing a PostgreSQL database on the realistic model."""
    from bench import workload
    from evaluator.evaluation import CheckpointKey, Evaluation, Status
    from evaluator.store import Store
    from tests import pg

    if pg.binaries() is None:
        raise SystemExit("bench pool: PostgreSQL's server (initdb, pg_ctl) is not installed")
    server_gen = pg.start_server(fsync=True)
    server = next(server_gen)
    try:
        urls = {"sqlite": f"sqlite:///{work / 'claims.db'}", "postgresql": server.create_database()}
        claim_ms: dict[str, float] = {}
        row_ms: dict[str, float] = {}
        for backend, url in urls.items():
            store = Store.open(url, create=True)
            store.upgrade()
            claims, records = [], []
            for index in range(sizes.pool_claims):
                key = CheckpointKey("/bench", "default", f"m-{index}", "f")
                start = time.perf_counter()
                store.claim(key, "bench", lease=90)
                claims.append(time.perf_counter() - start)
                start = time.perf_counter()
                store.record(Evaluation("/bench", key.checkpoint, index, Status.OK, datetime.now(timezone.utc),
                                        fingerprint="f", accuracy=0.5, loss=1.0, examples=10), owner="bench")
                records.append(time.perf_counter() - start)
            claim_ms[backend] = 1000 * statistics.median(claims)
            row_ms[backend] = 1000 * statistics.median(records)
            store.release()
        model_dir = work / "pool"
        workload.write_checkpoints(str(model_dir), sizes.pool_checkpoints)
        per_minute = {}
        for workers in (1, 2):
            url = server.create_database()
            procs = [subprocess.Popen([sys.executable, "-m", "evaluator", "watch", str(model_dir), "--task", WORKLOAD_TASK,
                                       "--db", url, "--once", "--no-summaries", "--keep-best", "0"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
                     for _ in range(workers)]
            for proc in procs:
                proc.wait(timeout=900)
            store = Store.open(url, create=False)
            rows = store.history(last=10_000).rows
            store.release()
            span = (max(r.evaluated_at for r in rows) - min(r.started_at for r in rows if r.started_at)).total_seconds()
            per_minute[workers] = 60 * len(rows) / span
    finally:
        for _ in server_gen:
            pass
    return {"pool": {"claim_ms": claim_ms, "row_ms": row_ms, "checkpoints": sizes.pool_checkpoints, "per_minute": per_minute,
                     "speedup": per_minute[2] / per_minute[1], "parameters": workload.parameters()}}


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
    peak = _status_kb(watch.process.pid, "VmHWM") / 1024
    watch.stop()
    return samples, peak


def measure_memory(work: Path, sizes: Sizes) -> dict[str, Any]:
    """3. the daemon's RSS after 10 ... 200 evaluated checkpoints of the realistic model."""
    from bench import workload

    staged = work / "memory-staged"
    workload.write_checkpoints(str(staged), 1)
    model_dir = work / "memory"
    model_dir.mkdir()
    samples, peak = rss_over_checkpoints(staged, "model.ckpt-2", "model.ckpt", model_dir, WORKLOAD_TASK, sizes)
    first, last = sizes.memory_marks[0], sizes.memory_marks[-1]
    return {"memory": {"rss_mb": samples, "growth_mb": samples[last] - samples[first], "from": first,
                       "to": last, "peak_rss_mb": peak}}


#: The release before `report` read a few index entries per evaluation (git commit), and where it is
#: checked out to be measured side by side (a `git worktree`, made when missing).
PREVIOUS_RELEASE = "6b3f6e2"
PREVIOUS_TREE = Path("/tmp/prev-release")
#: Its schema revision (the databases it reads are built at this one, then upgraded for this version).
PREVIOUS_REVISION = "0006"
#: Each `report` form measured, by name: its arguments.
REPORT_FORMS = {
    "last_10": ("--last", "10"), "best": ("--best",), "dataset": ("--dataset", "validation"),
    "metric": ("--metric", "loss"), "best_by": ("--best-by", "loss"), "root": ("--root", "/data/jobs"),
    "model_dir": ("--model-dir", "/data/jobs/job1"), "json": ("--last", "10", "--format", "json"),
    "csv": ("--last", "10", "--format", "csv"),
}
#: Within this factor of the same report on 1,000 rows (the issue's target).
REPORT_GROWTH_TARGET = 1.25
#: Run in a subprocess: each form through the CLI, the statements it sent, each one's EXPLAIN QUERY PLAN.
_PLANS = r"""
import contextlib, io, json, sqlite3, sys
from sqlalchemy import Engine, event
from evaluator.cli import main
db, forms = sys.argv[1], json.loads(sys.argv[2])
raw = sqlite3.connect(db)
found = {}
for form, args in forms.items():
    sent = []
    def keep(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))
    event.listen(Engine, "before_cursor_execute", keep)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            main(["report", *args, "--db", "sqlite:///" + db])
    except SystemExit:
        pass
    finally:
        event.remove(Engine, "before_cursor_execute", keep)
    plans = {}
    for statement, parameters in sent:
        sql = " ".join(statement.split())
        if sql not in plans:
            plans[sql] = [r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters)]
    found[form] = [{"sql": sql, "plan": plan} for sql, plan in plans.items()]
print(json.dumps(found))
"""


def _previous_release() -> dict[str, Any]:
    """The previous release's tree, checked to be what `PYTHONPATH=tree python` imports (evaluator and
    its migrations): {"path", "commit", "evaluator", "migrations"}, or {"error"} when it can't be had."""
    tree = PREVIOUS_TREE
    try:
        if not (tree / "evaluator").is_dir():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=True, capture_output=True)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), PREVIOUS_RELEASE],
                           check=True, capture_output=True, text=True)
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], check=True, capture_output=True,
                                text=True).stdout.strip()
        if not commit.startswith(PREVIOUS_RELEASE):
            return {"error": f"{tree} is at {commit}, not {PREVIOUS_RELEASE}"}
        # From a source tree its migrations are ../migrations; without this link, evaluator.migrations
        # would be found through this checkout's editable install: the new migrations.
        link = tree / "evaluator" / "migrations"
        if not link.exists():
            link.symlink_to(Path("..") / "migrations")
        code = "import evaluator, evaluator.migrations as m; print(evaluator.__file__); print(list(m.__path__)[0])"
        where = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                               cwd=tree.parent, env={**os.environ, "PYTHONPATH": str(tree)}).stdout.split()
    except (OSError, subprocess.CalledProcessError) as err:
        said = (getattr(err, "stderr", None) or "").strip().splitlines()  # git's own words, when it said any
        return {"error": said[-1] if said else str(err)}
    if not (where[0].startswith(str(tree) + os.sep) and os.path.realpath(where[1]) == str((tree / "migrations").resolve())):
        return {"error": f"PYTHONPATH={tree} imports {where}, not that tree"}
    return {"path": str(tree), "commit": commit, "evaluator": where[0], "migrations": where[1]}


def _report_rows(db: Path, rows: int, jobs: int) -> None:
    """`rows` evaluations over `jobs` model directories, each with its metrics rows as `watch` writes
    them (accuracy, loss, examples of the set "validation"), inserted in big batches."""
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA synchronous = OFF")
    now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    settings = json.dumps({"task": WORKLOAD_TASK, "ema": True, "batch_size": 256}, sort_keys=True)
    per_job, batch, ident = rows // jobs, 100_000 // jobs, 0
    with connection:
        for start in range(0, per_job, batch):
            evaluations, metrics = [], []
            for j in range(jobs):
                for i in range(start, min(per_job, start + batch)):
                    ident += 1
                    accuracy, loss = 0.5 + (i % 997) / 2000, 1.0 / (i + 1)
                    evaluations.append((ident, f"/data/jobs/job{j}", "default", f"model.ckpt-{i * 100}", f"{i:016x}",
                                        i * 100, "ok", accuracy, loss, 10_000, "tf1-names", 0.05, 1.0, "cpu", now,
                                        now, now, settings))
                    metrics += [(ident, "validation", "accuracy", accuracy, "max"),
                                (ident, "validation", "loss", loss, "min"),
                                (ident, "validation", "examples", 10_000.0, None)]
            connection.executemany(
                "INSERT INTO evaluations (id, model_dir, name, checkpoint, fingerprint, step, status, accuracy, loss, "
                "examples, ema_source, restore_seconds, eval_seconds, device, detected_at, started_at, evaluated_at, "
                "settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", evaluations)
            connection.executemany("INSERT INTO metrics (evaluation_id, dataset, name, value, goal) "
                                   "VALUES (?, ?, ?, ?, ?)", metrics)
    connection.close()


def measure_report(work: Path, sizes: Sizes) -> dict[str, Any]:
    """5. every `report` form on 1,000 and on 1,000,000 rows (4 model directories), this version and
    the previous release: seconds and the ratio (within 1.25x); the query plans of what a report
    asks; `evaluator --help`; every row as JSON, CSV and a table."""
    from alembic import command

    from evaluator.store import Store, alembic_config

    jobs = 4
    previous = _previous_release()
    old_env = {**os.environ, "PYTHONPATH": previous.get("path", "")}

    def build(rows: int) -> tuple[Path, Path, float]:
        """(the previous release's database, this version's: the same rows, upgraded; the upgrade's seconds)."""
        old, new = work / f"report-{rows}-previous.db", work / f"report-{rows}.db"
        if "path" in previous:  # its own schema, by its own code
            subprocess.run([sys.executable, "-m", "evaluator", "db", "upgrade", "--db", f"sqlite:///{old}"], check=True,
                           cwd=work, env=old_env, stdout=subprocess.DEVNULL)
        else:
            with Store.open(f"sqlite:///{old}", create=True) as store, store.engine.begin() as connection:
                cfg = alembic_config()
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, PREVIOUS_REVISION)
        _report_rows(old, rows, jobs)
        shutil.copyfile(old, new)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "evaluator", "db", "upgrade", "--db", f"sqlite:///{new}"], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
        return old, new, time.perf_counter() - start

    start = time.perf_counter()
    small_old, small, _ = build(sizes.report_small_rows)
    large_old, large, upgrade_s = build(sizes.report_rows)
    build_s = time.perf_counter() - start
    url = f"sqlite:///{large}"

    def run(db: Path, args: tuple[str, ...], old: bool = False) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "evaluator", "report", *args, "--db", f"sqlite:///{db}"], check=True,
                       cwd=work if old else ROOT, env=old_env if old else None,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    def pair(args: tuple[str, ...], old: bool, repeats: int) -> tuple[float, float]:
        """Median seconds on the small and on the large database, runs alternating."""
        dbs = (small_old, large_old) if old else (small, large)
        runs: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeats):
            for db, times in zip(dbs, runs):
                times.append(run(db, args, old))
        return statistics.median(runs[0]), statistics.median(runs[1])

    for db, old in ((small, False), (large, False), *(((small_old, True), (large_old, True)) if "path" in previous else ())):
        run(db, ("--last", "1"), old)  # warm: the file in the page cache, the modules' bytecode
    forms: dict[str, dict[str, Any]] = {}
    for form, args in REPORT_FORMS.items():
        small_s, large_s = pair(args, False, sizes.report_repeats)
        forms[form] = {"args": list(args), "small_s": small_s, "large_s": large_s, "ratio": large_s / small_s}
        if "path" in previous:
            old_small_s, old_large_s = pair(args, True, sizes.report_previous_repeats)
            forms[form].update(previous_small_s=old_small_s, previous_large_s=old_large_s,
                               previous_ratio=old_large_s / old_small_s)

    def plans(db: Path, old: bool) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-c", _PLANS, str(db), json.dumps(REPORT_FORMS)], check=True,
                              cwd=work if old else ROOT, env=old_env if old else None, capture_output=True, text=True)
        return json.loads(done.stdout)

    def scans(found: dict[str, Any]) -> dict[str, list[str]]:
        """Per form, the plan lines that read a whole table of `evaluations` or `metrics`."""
        return {form: [line for q in queries for line in q["plan"]
                       if line.startswith(("SCAN evaluations", "SCAN metrics"))] for form, queries in found.items()}

    current_plans = plans(large, old=False)
    previous_plans = plans(large_old, old=True) if "path" in previous else {}

    def python_start() -> float:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    def imported(module: str) -> float:
        code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        return statistics.median(float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                                      text=True, check=True).stdout) for _ in range(3))

    def help_s() -> float:
        runs = []
        for _ in range(sizes.report_repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "evaluator", "--help"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    query = []
    with Store.open(url, create=False) as store:
        for _ in range(5):
            start = time.perf_counter()
            store.history(last=10)
            query.append(time.perf_counter() - start)

    # Every row streamed: on a history of its own size (1,000,000 rows as JSON alone take minutes).
    if sizes.report_stream_rows == sizes.report_rows:
        streamed = large
    else:
        streamed = work / "report-stream.db"
        with Store.open(f"sqlite:///{streamed}", create=True) as store, store.engine.begin() as connection:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, PREVIOUS_REVISION)
        _report_rows(streamed, sizes.report_stream_rows, jobs)
        subprocess.run([sys.executable, "-m", "evaluator", "db", "upgrade", "--db", f"sqlite:///{streamed}"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)

    def everything(fmt: str) -> tuple[float, float]:
        """`report --last 1000000 --format FMT` on every row: seconds and the process's peak RSS (MB)."""
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) parent.
        code = ("import sys; from evaluator.cli import main\n"
                "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
                "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
                "print(hwm.split()[1], file=sys.stderr)")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, "report", "--last", "1000000", "--format", fmt,
                               "--db", f"sqlite:///{streamed}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=True)
        return time.perf_counter() - start, int(done.stderr.strip().splitlines()[-1]) / 1024

    return {"report": {
        "rows": sizes.report_rows, "small_rows": sizes.report_small_rows, "model_dirs": jobs,
        "metrics_per_row": 3, "growth_target": REPORT_GROWTH_TARGET, "previous_release": previous,
        "build_s": build_s, "upgrade_s": upgrade_s, "forms": forms,
        "report_last_10_s": forms["last_10"]["large_s"], "report_json_s": forms["json"]["large_s"],
        "report_one_dir_s": forms["model_dir"]["large_s"],
        "plans": current_plans, "full_scans": scans(current_plans),
        "previous_plans": previous_plans, "previous_full_scans": scans(previous_plans),
        "help_s": help_s(),
        "query_ms": 1000 * statistics.median(query),
        "python_startup_s": python_start(),
        "import_sqlalchemy_orm_s": imported("sqlalchemy.orm"),
        "import_rich_table_s": imported("rich.table"),
        "stream_rows": sizes.report_stream_rows,
        **{f"all_rows_{fmt}_{what}": value for fmt in ("json", "csv", "table")
           for what, value in zip(("s", "peak_rss_mb"), everything(fmt))},
    }}


def measure_throughput(work: Path, sizes: Sizes) -> dict[str, Any]:
    """6. checkpoints evaluated per minute while the digits trainer saves as fast as it can."""
    model_dir = work / "throughput"
    model_dir.mkdir()
    watch = Watch(model_dir, work / "throughput.db", DIGITS_TASK).wait_ready()
    count = sizes.throughput_checkpoints
    start = time.time()
    subprocess.run([sys.executable, str(DIGITS / "train.py"), str(model_dir), "--steps", str(count),
                    "--save-every", "1", "--max-to-keep", str(count + 1)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    trained = time.time()
    rows = watch.wait_rows(count)
    watch.stop()
    first = min(epoch(r["started_at"]) for r in rows)
    last = max(epoch(r["evaluated_at"]) for r in rows)
    saves = sorted(p.stat().st_mtime for p in model_dir.glob("model.ckpt-*.index"))
    save_span = (saves[-1] - saves[0]) if len(saves) > 1 else trained - start
    return {"throughput": {
        "checkpoints": count, "ok": sum(r["status"] == "ok" for r in rows),
        "trainer_per_minute": 60 * (len(saves) - 1) / save_span if save_span else None,
        "evaluated_per_minute": 60 * len(rows) / (last - first),
        "lag_after_last_save_s": last - max(saves) if saves else None,
        "mean_eval_ms": 1000 * statistics.mean(r["eval_seconds"] for r in rows),
        "mean_restore_ms": 1000 * statistics.mean(r["restore_seconds"] for r in rows),
    }}


def measure_keras(work: Path, sizes: Sizes) -> dict[str, Any]:
    """8. the TF2 path: restore (EMA) + evaluate one Keras checkpoint of the realistic model against a
    hand-written eager loop in the same process; RSS of `watch` over many Keras checkpoints."""
    from bench import keras_workload
    from evaluator import checkpoints
    from evaluator.models.keras import KerasModel

    model_dir = work / "keras-cost"
    keras_workload.write_checkpoints(str(model_dir), sizes.cost_checkpoints)
    listed = checkpoints.read_state(str(model_dir)).checkpoints
    ours_model = KerasModel.build(keras_workload.TASK, device="auto", batch_size=keras_workload.TASK.batch_size)
    hand = keras_workload.HandWrittenEager(keras_workload.TASK.batch_size)
    for ckpt in listed:  # warm both up
        ours_model.evaluate(ckpt)
        hand(ckpt.path)
    ours, theirs = race(ours_model.evaluate, lambda ckpt: hand(ckpt.path), listed, sizes.cost_rounds)

    staged = work / "keras-memory-staged"
    keras_workload.write_checkpoints(str(staged), 1)
    memory_dir = work / "keras-memory"
    memory_dir.mkdir()
    samples, _ = rss_over_checkpoints(staged, "ckpt-1", "ckpt", memory_dir, KERAS_WORKLOAD_TASK, sizes)
    first, last = sizes.memory_marks[0], sizes.memory_marks[-1]
    return {"keras": {
        "parameters": int(sum(np.prod(v.shape) for v in ours_model.variables)), "examples": ours_model.examples,
        "device": ours_model.device, "evaluator_s": statistics.median(ours), "handwritten_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs), "traces": ours_model.traces,
        "rss_mb": samples, "growth_mb": samples[last] - samples[first], "from": first, "to": last,
    }}


def measure_poll(work: Path, sizes: Sizes) -> dict[str, Any]:
    """7. what --poll misses: a trainer saving every step with max_to_keep=2 deletes most checkpoints
    within one poll interval; with inotify events each one still gets its row."""
    modes: list[tuple[str, tuple[str, ...]]] = [("events", ())]
    modes += [(f"poll {interval:g} s", ("--poll", "--poll-interval", str(interval))) for interval in sizes.poll_intervals]
    found: dict[str, Any] = {}
    for index, (mode, args) in enumerate(modes):
        model_dir = work / f"poll-{index}"
        model_dir.mkdir()
        watch = Watch(model_dir, work / f"poll-{index}.db", DIGITS_TASK, args=args).wait_ready()
        trainer = subprocess.run([sys.executable, str(DIGITS / "train.py"), str(model_dir), "--steps",
                                  str(sizes.poll_checkpoints), "--save-every", "1", "--max-to-keep", "2"],
                                 check=True, cwd=ROOT, capture_output=True, text=True,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        saved = [line.split(" ", 1)[1] for line in trainer.stdout.splitlines() if line.startswith("saved ")]
        last = os.path.basename(saved[-1])
        wait(lambda: any(r["checkpoint"] == last for r in watch.rows()), 120, watch, f"{mode}: the last save")
        time.sleep(2)
        rows = watch.rows()
        watch.stop()
        found[mode] = {"saved": len(saved), "rows": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
                       "missing": sum(r["status"] == "missing" for r in rows)}
    return {"poll": found}


# -- the machine and the output --------------------------------------------------------------

def machine() -> dict[str, Any]:
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    gpu_names: list[str] = []
    if gpus and shutil.which("nvidia-smi"):
        gpu_names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                   capture_output=True, text=True).stdout.split("\n")[:len(gpus)]
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": ", ".join(n for n in gpu_names if n) or (
        ", ".join(gpus) if gpus else "none"), "tensorflow": tf.__version__, "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measure, evaluator, baseline, target, met) rows for what was measured."""
    rows: list[tuple[str, str, str, str, str]] = []

    def met(ok: bool) -> str:
        return "yes" if ok else "NO"

    if "latency" in results:
        lat = results["latency"]
        classic = (f"median {lat['classic_median_ms']:.0f} ms, p95 {lat['classic_p95_ms']:.0f} ms "
                   f"(checkpoints {1.3 * lat['classic_interval_s']:g} s apart); at one per "
                   f"{lat['spacing_s']:g} s it evaluated {lat['classic_fast_evaluated']} of {lat['classic_fast_checkpoints']}"
                   if lat["classic_median_ms"] is not None else "evaluated none")
        rows.append(("1. detection latency (rename -> evaluation start)",
                     f"median {lat['evaluator_median_ms']:.1f} ms, p95 {lat['evaluator_p95_ms']:.1f} ms; "
                     f"evaluated {lat['evaluator_evaluated']} of {lat['checkpoints']}",
                     f"classic loop, sleep({lat['classic_interval_s']:g}): {classic}",
                     f"median < {TARGETS['latency_median_ms']:.0f} ms",
                     met(lat["evaluator_median_ms"] < TARGETS["latency_median_ms"])))
    if "cost" in results:
        cost = results["cost"]
        rows.append((f"2. restore + evaluate one checkpoint ({cost['parameters'] / 1e6:.1f} M params, "
                     f"{cost['examples']} examples, {cost['device']})",
                     f"{cost['evaluator_s'] * 1000:.0f} ms (ratio {cost['ratio']:.3f}); the claim: "
                     f"{cost['claim_ms']:.1f} ms, the row (and dropping the claim): {cost['record_row_ms']:.1f} ms",
                     f"hand-written loop: {cost['handwritten_s'] * 1000:.0f} ms",
                     f"<= {TARGETS['cost_ratio']}x", met(cost["ratio"] <= TARGETS["cost_ratio"])))
    if "memory" in results:
        mem = results["memory"]
        rss = mem["rss_mb"]
        rows.append((f"3. RSS after {mem['from']} and {mem['to']} evaluated checkpoints",
                     f"{rss[mem['from']]:.0f} MB -> {rss[mem['to']]:.0f} MB (growth {mem['growth_mb']:+.1f} MB)",
                     "", f"growth < {TARGETS['memory_growth_mb']:.0f} MB",
                     met(mem["growth_mb"] < TARGETS["memory_growth_mb"])))
    if "idle" in results:
        idle = results["idle"]
        rows.append((f"4. idle CPU over {idle['seconds']:g} s",
                     f"{idle['cpu_seconds']:.2f} CPU s = {idle['percent_of_core']:.2f} % of a core", "",
                     f"< {TARGETS['idle_percent_of_core']:.0f} % of a core",
                     met(idle["percent_of_core"] < TARGETS["idle_percent_of_core"])))
    if "report" in results:
        rep = results["report"]
        rows.append((f"5. `evaluator report --last 10`, {rep['rows']:,} rows",
                     f"{rep['report_last_10_s']:.2f} s (json {rep['report_json_s']:.2f} s, one dir "
                     f"{rep['report_one_dir_s']:.2f} s). Of it: Python start {rep['python_startup_s']:.2f} s, "
                     f"`import sqlalchemy.orm` {rep['import_sqlalchemy_orm_s']:.2f} s, the query "
                     f"{rep['query_ms']:.0f} ms",
                     "", f"< {TARGETS['report_seconds']} s", met(rep["report_last_10_s"] < TARGETS["report_seconds"])))
        previous = rep["previous_release"]
        for form in rep["forms"].values():
            then = (f"previous release: {form['previous_small_s']:.2f} s -> {form['previous_large_s']:.2f} s "
                    f"({form['previous_ratio']:.2f}x)" if "previous_ratio" in form
                    else f"previous release: not measured ({' '.join(previous.get('error', '').split())[:80]})")
            rows.append((f"5. `report {' '.join(form['args'])}`, {rep['small_rows']:,} -> {rep['rows']:,} rows",
                         f"{form['small_s']:.2f} s -> {form['large_s']:.2f} s ({form['ratio']:.2f}x)", then,
                         f"<= {rep['growth_target']}x", met(form["ratio"] <= rep["growth_target"])))
        scanned = sorted({line for lines in rep["full_scans"].values() for line in lines})
        scanned_before = sorted({line for lines in rep["previous_full_scans"].values() for line in lines})
        rows.append((f"5. the report's queries on {rep['rows']:,} rows (EXPLAIN QUERY PLAN, all in the JSON)",
                     f"full scans of evaluations or metrics: {'; '.join(scanned) or 'none'}",
                     f"previous release: {'; '.join(scanned_before) or 'none'}" if previous.get("path") else "",
                     "none", met(not scanned)))
        rows.append((f"5. `evaluator db upgrade` of {rep['rows']:,} rows to this version (series, indexes)",
                     f"{rep['upgrade_s']:.1f} s", "", "", ""))
        rows.append(("5. `evaluator --help` start-up", f"{rep['help_s']:.2f} s", "", "", ""))
        rows.append((f"5. `report --last 1000000` on all {rep['stream_rows']:,} rows",
                     "; ".join(f"{fmt} {rep[f'all_rows_{fmt}_s']:.1f} s, peak {rep[f'all_rows_{fmt}_peak_rss_mb']:.0f} MB"
                               for fmt in ("json", "csv", "table")) + " (a table shows 1000 rows per run)",
                     "", "", ""))
    if "throughput" in results:
        thr = results["throughput"]
        rows.append(("6. throughput, digits trainer saving every step",
                     f"{thr['evaluated_per_minute']:.0f} checkpoints/min ({thr['ok']}/{thr['checkpoints']} ok)",
                     f"trainer saved {thr['trainer_per_minute']:.0f}/min", "", ""))
    if "keras" in results:
        ker = results["keras"]
        rows.append((f"8. TF2: restore (Keras use_ema) + evaluate one checkpoint ({ker['parameters'] / 1e6:.1f} M params, "
                     f"{ker['examples']} examples, {ker['device']})",
                     f"{ker['evaluator_s'] * 1000:.0f} ms (ratio {ker['ratio']:.3f}); forward pass traced {ker['traces']}x",
                     f"hand-written eager loop (ckpt.read + tf.function): {ker['handwritten_s'] * 1000:.0f} ms",
                     f"<= {TARGETS['cost_ratio']}x", met(ker["ratio"] <= TARGETS["cost_ratio"])))
        rss = ker["rss_mb"]
        rows.append((f"8. TF2: RSS after {ker['from']} and {ker['to']} Keras checkpoints",
                     f"{rss[ker['from']]:.0f} MB -> {rss[ker['to']]:.0f} MB (growth {ker['growth_mb']:+.1f} MB)", "",
                     f"growth < {TARGETS['memory_growth_mb']:.0f} MB", met(ker["growth_mb"] < TARGETS["memory_growth_mb"])))
    if "metrics" in results:
        met_ = results["metrics"]
        rows.append((f"9. {met_['metrics']} metrics on {met_['sets']} validation sets, one checkpoint "
                     f"({met_['parameters'] / 1e6:.1f} M params, {met_['examples']} examples per set, {met_['device']})",
                     f"{met_['evaluator_s'] * 1000:.0f} ms (ratio {met_['ratio']:.3f}); values within "
                     f"{met_['largest_difference']:.1e} of the loop's",
                     f"hand-written loop, same metrics: {met_['handwritten_s'] * 1000:.0f} ms",
                     f"<= {TARGETS['cost_ratio']}x", met(met_["ratio"] <= TARGETS["cost_ratio"])))
    if "pool" in results:
        pool = results["pool"]
        claims = pool["claim_ms"]
        recorded = pool["row_ms"]
        rows.append(("10. the claim per checkpoint (PostgreSQL with fsync, as deployed)",
                     f"SQLite {claims['sqlite']:.1f} ms, PostgreSQL {claims['postgresql']:.1f} ms; the row (and "
                     f"dropping the claim): {recorded['sqlite']:.1f} ms, {recorded['postgresql']:.1f} ms",
                     "", f"< {TARGETS['claim_ms']:.0f} ms", met(max(claims.values()) < TARGETS["claim_ms"])))
        rows.append((f"10. workers sharing PostgreSQL, {pool['checkpoints']} checkpoints of {pool['parameters'] / 1e6:.1f} M params",
                     f"one: {pool['per_minute'][1]:.0f}/min, two: {pool['per_minute'][2]:.0f}/min "
                     f"({pool['speedup']:.2f}x; both on this machine's cores)", "", "", ""))
    if "poll" in results:
        poll = results["poll"]
        cells = [f"{mode}: {r['rows']} rows of {r['saved']} saves ({r['ok']} ok, {r['missing']} missing)"
                 for mode, r in poll.items()]
        rows.append(("7. a fast trainer with max_to_keep=2: rows with events vs --poll", "; ".join(cells), "", "", ""))
    return rows


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores; GPU: {m['gpu']}; TensorFlow {m['tensorflow']}, "
             f"Python {m['python']}; {m['date']}{' (smoke sizes)' if results['smoke'] else ''}.", "",
             "| measure | evaluator | baseline | target | met |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in table(results)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--only", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--json", type=Path, default=OUT / "results.json", help="where to write the figures")
    parser.add_argument("--markdown", type=Path, default=OUT / "results.md", help="where to write the table")
    parser.add_argument("--baseline-interval", type=float, help="the classic loop's sleep (default 10 s)")
    parser.add_argument("--idle-seconds", type=float)
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    sizes = SMOKE if args.smoke else Sizes()
    if args.baseline_interval:
        sizes = replace(sizes, baseline_interval=args.baseline_interval)
    if args.idle_seconds:
        sizes = replace(sizes, idle_seconds=args.idle_seconds)
    os.environ.update({"BENCH_WIDTH": sizes.width, "BENCH_EXAMPLES": str(sizes.examples),
                       "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")})
    sys.path.insert(0, str(ROOT))

    results: dict[str, Any] = {"machine": machine(), "smoke": args.smoke, "sizes": asdict(sizes),
                               "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="evaluator-bench-") as scratch:
        work = Path(scratch)
        if "latency" in stages or "idle" in stages:
            results.update(_timed("latency + idle", measure_latency_and_idle, work, sizes))
        for stage, measure in (("cost", measure_cost), ("memory", measure_memory), ("report", measure_report),
                               ("throughput", measure_throughput), ("poll", measure_poll),
                               ("keras", measure_keras), ("metrics", measure_metrics), ("pool", measure_pool)):
            if stage in stages:
                results.update(_timed(stage, measure, work, sizes))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown(results))
    print()
    print(markdown(results))
    print(f"figures: {args.json}  table: {args.markdown}")


def _timed(name: str, measure: Callable[[Path, Sizes], dict[str, Any]], work: Path, sizes: Sizes) -> dict[str, Any]:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    result = measure(work, sizes)
    print(f"[bench] {name}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return result
