"""Stage `pool`: 10. the claim per checkpoint on SQLite and PostgreSQL; the claim, the row and the
best-export decision (under the pool's lock, from every worker's rows) with one and three workers at
once on each backend; and one vs two `watch` workers sharing a PostgreSQL database."""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import ROOT, TARGETS, WORKLOAD_TASK, Row, met

if TYPE_CHECKING:
    from bench.run import Sizes


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
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
        deciding = {backend: {workers: _decisions(url if backend == "sqlite" else server.create_database(),
                                                  work / f"decide-{backend}-{workers}", workers, sizes.pool_claims)
                              for workers in (1, 3)}
                    for backend, url in (("sqlite", f"sqlite:///{work / 'decide.db'}"), ("postgresql", None))}
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
    return {"pool": {"claim_ms": claim_ms, "row_ms": row_ms, "deciding": deciding,
                     "checkpoints": sizes.pool_checkpoints, "per_minute": per_minute,
                     "speedup": per_minute[2] / per_minute[1], "parameters": workload.parameters()}}


def _decisions(url: str, work: Path, workers: int, checkpoints: int) -> dict[str, float]:
    """`workers` processes at once, each claiming, recording and deciding the kept best (keep 3) for
    its share of `checkpoints` (each better than the last, so every decision changes what is kept):
    the median and 95th percentile of each step, in ms, over all workers."""
    from evaluator.store import Store

    model_dir = work / "model"
    model_dir.mkdir(parents=True)
    for step in range(checkpoints):
        (model_dir / f"model.ckpt-{step}.index").write_bytes(b"i" * 1000)
        (model_dir / f"model.ckpt-{step}.data-00000-of-00001").write_bytes(b"d" * 100_000)
    with Store.open(url, create=True) as store:
        store.upgrade()
    shares = [list(range(index, checkpoints, workers)) for index in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        timings = pool.starmap(_decide_worker, [(url, str(work), share) for share in shares])
    found: dict[str, float] = {}
    for step in ("claim", "row", "decision"):
        values = sorted(t for worker in timings for t in worker[step])
        found[f"{step}_ms"] = 1000 * statistics.median(values)
        found[f"{step}_p95_ms"] = 1000 * values[int(0.95 * (len(values) - 1))]
    return found


def _decide_worker(url: str, work: str, steps: list[int]) -> dict[str, list[float]]:
    import os

    import structlog

    from evaluator import checkpoints
    from evaluator.actions import Recorded
    from evaluator.actions.export import BestExport
    from evaluator.evaluation import CheckpointKey, Evaluation, Status
    from evaluator.store import Store

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log lines in the timings
    model_dir = os.path.join(work, "model")
    timings: dict[str, list[float]] = {"claim": [], "row": [], "decision": []}
    with Store.open(url, create=False) as store:
        owner = f"bench-{os.getpid()}"
        action = BestExport(os.path.join(work, "best"), model_dir, None, 3, ("checkpoint",), structlog.get_logger(),
                            store, "default")
        for step in steps:
            name = f"model.ckpt-{step}"
            key = CheckpointKey(model_dir, "default", name, "f")
            start = time.perf_counter()
            store.claim(key, owner, lease=90)
            timings["claim"].append(time.perf_counter() - start)
            held = checkpoints.hold(os.path.join(model_dir, name))
            accuracy = step / (len(steps) * 10)
            row = Evaluation(model_dir, name, step, Status.OK, datetime.now(timezone.utc), fingerprint="f",
                             accuracy=accuracy, loss=1 - accuracy, examples=10,
                             metrics={"validation": {"accuracy": accuracy, "loss": 1 - accuracy, "examples": 10}},
                             goals={"accuracy": "max", "loss": "min"})
            start = time.perf_counter()
            store.record(row, owner=owner)
            timings["row"].append(time.perf_counter() - start)
            start = time.perf_counter()
            action.after(Recorded(row, held))
            timings["decision"].append(time.perf_counter() - start)
            checkpoints.release(held)
    return timings


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "pool" not in results:
        return []
    rows: list[Row] = []
    pool = results["pool"]
    claims = pool["claim_ms"]
    recorded = pool["row_ms"]
    rows.append(("10. the claim per checkpoint (PostgreSQL with fsync, as deployed)",
                 f"SQLite {claims['sqlite']:.1f} ms, PostgreSQL {claims['postgresql']:.1f} ms; the row (and "
                 f"dropping the claim): {recorded['sqlite']:.1f} ms, {recorded['postgresql']:.1f} ms",
                 "", f"< {TARGETS['claim_ms']:.0f} ms", met(max(claims.values()) < TARGETS["claim_ms"])))
    for backend, by_workers in pool.get("deciding", {}).items():
        one, three = (by_workers.get(n, by_workers.get(str(n))) for n in (1, 3))  # (str keys once read from JSON)
        rows.append((f"10. claim, row and best-export decision, {backend}, 1 and 3 workers at once",
                     " · ".join(f"{step} {one[f'{step}_ms']:.1f} / {three[f'{step}_ms']:.1f} ms "
                                f"(p95 {one[f'{step}_p95_ms']:.1f} / {three[f'{step}_p95_ms']:.1f})"
                                for step in ("claim", "row", "decision")), "", "", ""))
    rows.append((f"10. workers sharing PostgreSQL, {pool['checkpoints']} checkpoints of {pool['parameters'] / 1e6:.1f} M params",
                 f"one: {pool['per_minute'][1]:.0f}/min, two: {pool['per_minute'][2]:.0f}/min "
                 f"({pool['speedup']:.2f}x; both on this machine's cores)", "", "", ""))
    return rows
