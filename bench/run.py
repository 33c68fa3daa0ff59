"""The evaluator's benchmark: how fast it notices, evaluates and reports, against what users run today.

    python -m bench                     # the full run (about ten minutes on 2 cores)
    python -m bench --smoke             # tiny sizes, about a minute: CI runs it so the bench can't rot
    python -m bench --only latency,report
    python -m bench --only catchup,latency,idle

Prints a table and writes the same figures as JSON (bench/out/results.json) and as a markdown
table (bench/out/results.md). The targets are those of the benchmark issue; bench/RESULTS.md
holds a run's figures with their explanation.

This module is the driver (arguments, sizes, the stages chosen, the table); each stage is a module of
bench/stages/ (`measure(work, sizes)`, `table_rows(results)`), what they share is in bench/common.py,
and the previous release they are measured beside in bench/previous.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench.common import ROOT, TARGETS, Row
from bench.stages import catchup, cost, keras, latency, memory, metrics, nocode, objectstore, pins, poll, pool, report, throughput

OUT = ROOT / "bench" / "out"
#: What `measure` runs for each stage chosen, in this order; `latency` and `idle` are one run.
MEASURES: dict[tuple[str, ...], tuple[str, Callable[[Path, Any], dict[str, Any]]]] = {
    ("latency", "idle"): ("latency + idle", latency.measure),
    ("cost",): ("cost", cost.measure),
    ("memory",): ("memory", memory.measure),
    ("report",): ("report", report.measure),
    ("throughput",): ("throughput", throughput.measure),
    ("poll",): ("poll", poll.measure),
    ("keras",): ("keras", keras.measure),
    ("metrics",): ("metrics", metrics.measure),
    ("pool",): ("pool", pool.measure),
    ("catchup",): ("catchup", catchup.measure),
    ("nocode",): ("nocode", nocode.measure),
    ("pins",): ("pins", pins.measure),
    ("objectstore",): ("objectstore", objectstore.measure),
}
STAGES = tuple(stage for stages in MEASURES for stage in stages)
#: The table's rows, in this order (each stage's rows when its figures are there).
TABLE: tuple[Callable[[dict[str, Any]], list[Row]], ...] = (
    latency.latency_rows, cost.table_rows, memory.table_rows, latency.idle_rows, report.table_rows,
    throughput.table_rows, keras.table_rows, metrics.table_rows, pool.table_rows, poll.table_rows,
    catchup.table_rows, nocode.table_rows, pins.table_rows, objectstore.table_rows,
)


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
    #: A backlog present at start: this many digits checkpoints, and this many of the realistic model.
    catchup_small: int = 3000
    catchup_big: int = 30
    #: Pins: checkpoints pinned and let go to time it; a fast trainer's saves watched from before it
    #: starts, and watched from the same moment.
    pins_costs: int = 200
    pins_saves: int = 200
    pins_together: int = 30
    #: A model directory on S3 (moto on loopback): checkpoints uploaded one at a time, a checkpoint
    #: of this many MiB downloaded, a prefix of this many objects listed.
    objectstore_checkpoints: int = 5
    objectstore_mb: int = 64
    objectstore_objects: int = 1000


SMOKE = Sizes(latency_checkpoints=3, latency_spacing=0.3, baseline_interval=0.5, classic_checkpoints=2,
              width="64,32", examples=500,
              cost_checkpoints=2, cost_rounds=2, memory_marks=(3, 6), memory_examples=100, idle_seconds=2.0,
              report_rows=2000, report_small_rows=200, report_repeats=1, report_previous_repeats=1,
              report_stream_rows=2000, throughput_checkpoints=15, poll_checkpoints=20,
              poll_intervals=(1.0,), pool_claims=20, pool_checkpoints=4,
              catchup_small=30, catchup_big=3, pins_costs=5, pins_saves=10, pins_together=5,
              objectstore_checkpoints=2, objectstore_mb=4, objectstore_objects=100)


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


def table(results: dict[str, Any]) -> list[Row]:
    """(measure, evaluator, baseline, target, met) rows for what was measured."""
    return [row for rows in TABLE for row in rows(results)]


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
        for names, (label, measure) in MEASURES.items():
            if any(name in stages for name in names):
                results.update(_timed(label, measure, work, sizes))
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
