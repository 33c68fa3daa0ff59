"""Stage `memory`: 3. the daemon's RSS as it evaluates more and more checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import TARGETS, WORKLOAD_TASK, Row, met, rss_over_checkpoints

if TYPE_CHECKING:
    from bench.run import Sizes


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
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


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "memory" not in results:
        return []
    rows: list[Row] = []
    mem = results["memory"]
    rss = mem["rss_mb"]
    rows.append((f"3. RSS after {mem['from']} and {mem['to']} evaluated checkpoints",
                 f"{rss[mem['from']]:.0f} MB -> {rss[mem['to']]:.0f} MB (growth {mem['growth_mb']:+.1f} MB)",
                 "", f"growth < {TARGETS['memory_growth_mb']:.0f} MB",
                 met(mem["growth_mb"] < TARGETS["memory_growth_mb"])))
    return rows
