"""Stage `pool`: 10. the claim per checkpoint on SQLite and PostgreSQL, and one vs two `watch`
workers sharing a PostgreSQL database."""

from __future__ import annotations

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
    rows.append((f"10. workers sharing PostgreSQL, {pool['checkpoints']} checkpoints of {pool['parameters'] / 1e6:.1f} M params",
                 f"one: {pool['per_minute'][1]:.0f}/min, two: {pool['per_minute'][2]:.0f}/min "
                 f"({pool['speedup']:.2f}x; both on this machine's cores)", "", "", ""))
    return rows
