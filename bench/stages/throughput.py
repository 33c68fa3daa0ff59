"""Stage `throughput`: 6. checkpoints evaluated per minute while the digits trainer saves as fast as
it can."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import DIGITS, DIGITS_TASK, ROOT, Row, Watch, epoch

if TYPE_CHECKING:
    from bench.run import Sizes


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
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


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "throughput" not in results:
        return []
    rows: list[Row] = []
    thr = results["throughput"]
    rows.append(("6. throughput, digits trainer saving every step",
                 f"{thr['evaluated_per_minute']:.0f} checkpoints/min ({thr['ok']}/{thr['checkpoints']} ok)",
                 f"trainer saved {thr['trainer_per_minute']:.0f}/min", "", ""))
    return rows
