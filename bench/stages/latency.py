"""Stages `latency` and `idle` (measured together): 1. how long from the rename of the state file to
the evaluation's start, against the classic `mnist_eval.py` loop; 4. the CPU `watch` spends idle.
Both beside the previous release's figures, with the same renames at the same pace."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (DIGITS_TASK, ROOT, TARGETS, Row, Watch, digits_trainer, epoch, link_checkpoint, met,
                          percentile, wait, write_state)
from bench.previous import not_measured, previous_release

if TYPE_CHECKING:
    from bench.run import Sizes


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
    """1. rename of the state file -> evaluation start, evaluator vs the classic loop; 4. idle CPU.

    First checkpoints come every `latency_spacing` seconds (the classic loop sees only some), then
    every 1.3 x its interval (it sees each one: its own latency). The evaluator is measured on all.
    Then the previous release alone, on the same checkpoints at the same pace (no classic loop).
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
    renamed = _feed(staged, names, model_dir, sizes)
    rows = watch.wait_rows(len(names))
    time.sleep(sizes.baseline_interval + 1)
    classic.terminate()
    classic.wait()

    ours = _latencies(rows, renamed)
    theirs = {e["checkpoint"]: 1000 * (e["started_at"] - renamed[e["checkpoint"]])
              for e in map(json.loads, classic_log.read_text().splitlines()) if e["event"] == "evaluated"}
    spaced = [theirs[n] for n in names[fast:] if n in theirs]
    seen_fast = sum(n in theirs for n in names[:fast])
    idle_cpu, rss_idle = _idle(watch, sizes.idle_seconds)
    watch.stop()

    latency = {
        "checkpoints": len(names), "spacing_s": sizes.latency_spacing,
        "evaluator_median_ms": statistics.median(ours), "evaluator_p95_ms": percentile(ours, 0.95),
        "evaluator_max_ms": max(ours), "evaluator_evaluated": len(rows),
        "classic_interval_s": sizes.baseline_interval,
        "classic_median_ms": statistics.median(spaced) if spaced else None,
        "classic_p95_ms": percentile(spaced, 0.95) if spaced else None,
        "classic_spaced_checkpoints": slow, "classic_spaced_evaluated": len(spaced),
        "classic_fast_checkpoints": fast, "classic_fast_evaluated": seen_fast,
    }
    idle = {"seconds": sizes.idle_seconds, "cpu_seconds": idle_cpu,
            "percent_of_core": 100 * idle_cpu / sizes.idle_seconds, "rss_mb": rss_idle}

    previous = previous_release()
    latency["previous_release"] = idle["previous_release"] = previous
    if "path" in previous:
        old_dir = work / "latency-previous"
        old_dir.mkdir()
        old = Watch(old_dir, work / "latency-previous.db", DIGITS_TASK, tree=Path(previous["path"])).wait_ready()
        old_renamed = _feed(staged, names, old_dir, sizes)
        old_rows = old.wait_rows(len(names))
        theirs_ms = _latencies(old_rows, old_renamed)
        old_idle_cpu, old_rss = _idle(old, sizes.idle_seconds)
        old.stop()
        latency.update(previous_median_ms=statistics.median(theirs_ms), previous_p95_ms=percentile(theirs_ms, 0.95),
                       previous_max_ms=max(theirs_ms), previous_evaluated=len(old_rows))
        idle.update(previous_cpu_seconds=old_idle_cpu, previous_percent_of_core=100 * old_idle_cpu / sizes.idle_seconds,
                    previous_rss_mb=old_rss)
    return {"latency": latency, "idle": idle}


def _feed(staged: Path, names: list[str], model_dir: Path, sizes: Sizes) -> dict[str, float]:
    """Link each checkpoint into `model_dir` and rename a state file listing it (and the 4 before it,
    like max_to_keep=5) into place: `latency_checkpoints` every `latency_spacing` s, the rest every
    1.3 x the classic loop's interval. Returns when each state file landed, by checkpoint."""
    renamed: dict[str, float] = {}
    for index, name in enumerate(names, start=1):
        link_checkpoint(staged, name, model_dir, name)
        renamed[name] = write_state(model_dir, names[max(0, index - 5):index])
        time.sleep(sizes.latency_spacing if index <= sizes.latency_checkpoints else 1.3 * sizes.baseline_interval)
    return renamed


def _latencies(rows: list[dict[str, Any]], renamed: dict[str, float]) -> list[float]:
    """Milliseconds from each checkpoint's rename to its evaluation's start."""
    return [1000 * (epoch(r["started_at"]) - renamed[r["checkpoint"]]) for r in rows]


def _idle(watch: Watch, seconds: float) -> tuple[float, float]:
    """CPU seconds `watch` spends over `seconds` with nothing to do, and its RSS (MB) then."""
    before = watch.cpu_seconds()
    time.sleep(seconds)
    return watch.cpu_seconds() - before, watch.rss_mb()


def latency_rows(results: dict[str, Any]) -> list[Row]:
    if "latency" not in results:
        return []
    lat = results["latency"]
    classic = (f"median {lat['classic_median_ms']:.0f} ms, p95 {lat['classic_p95_ms']:.0f} ms "
               f"(checkpoints {1.3 * lat['classic_interval_s']:g} s apart); at one per "
               f"{lat['spacing_s']:g} s it evaluated {lat['classic_fast_evaluated']} of {lat['classic_fast_checkpoints']}"
               if lat["classic_median_ms"] is not None else "evaluated none")
    ours = (f"median {lat['evaluator_median_ms']:.1f} ms, p95 {lat['evaluator_p95_ms']:.1f} ms; "
            f"evaluated {lat['evaluator_evaluated']} of {lat['checkpoints']}")
    target = f"median < {TARGETS['latency_median_ms']:.0f} ms"
    rows = [("1. detection latency (rename -> evaluation start)", ours,
             f"classic loop, sleep({lat['classic_interval_s']:g}): {classic}", target,
             met(lat["evaluator_median_ms"] < TARGETS["latency_median_ms"]))]
    previous = lat.get("previous_release", {})
    then = (f"previous release ({previous['commit'][:7]}): median {lat['previous_median_ms']:.1f} ms, "
            f"p95 {lat['previous_p95_ms']:.1f} ms; evaluated {lat['previous_evaluated']} of {lat['checkpoints']}"
            if "previous_median_ms" in lat else not_measured(previous))
    rows.append(("1. detection latency beside the previous release (the same renames, one at a time)",
                 ours, then, target, met(lat["evaluator_median_ms"] < TARGETS["latency_median_ms"])))
    return rows


def idle_rows(results: dict[str, Any]) -> list[Row]:
    if "idle" not in results:
        return []
    idle = results["idle"]
    previous = idle.get("previous_release", {})
    then = (f"previous release ({previous['commit'][:7]}): {idle['previous_cpu_seconds']:.2f} CPU s = "
            f"{idle['previous_percent_of_core']:.2f} % of a core" if "previous_percent_of_core" in idle
            else not_measured(previous) if previous else "")
    return [(f"4. idle CPU over {idle['seconds']:g} s",
             f"{idle['cpu_seconds']:.2f} CPU s = {idle['percent_of_core']:.2f} % of a core", then,
             f"< {TARGETS['idle_percent_of_core']:.0f} % of a core",
             met(idle["percent_of_core"] < TARGETS["idle_percent_of_core"]))]
