"""Stage `catchup`: a backlog present at start (a sweep, downtime), evaluated by `watch --once`,
against a bare loop that restores and evaluates the same files, and against the previous release.

Small model: the digits network in the classic `mnist_train.py` style (two layers, 360 examples), where
the fixed costs per checkpoint (fingerprint, claim, row, summaries, the best's bookkeeping, the log
line) weigh most. Realistic model: bench/workload.py's 3.7 M parameters, where the evaluation itself
dominates. Checkpoints are hard links of a few trained ones under thousands of names, as a sweep's
directory of many saves looks to the reader.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import DIGITS_TASK, ROOT, WORKLOAD_TASK, Row, digits_trainer, link_checkpoint, met
from bench.previous import not_measured, previous_release

if TYPE_CHECKING:
    from bench.run import Sizes


def stage_links(staged: Path, sources: list[str], model_dir: Path, count: int, family: str) -> list[str]:
    """`count` checkpoints in `model_dir`, each a hard link of one of `sources` (round robin) named
    `family-N`, and a state file listing them all."""
    model_dir.mkdir(parents=True)
    names = []
    for index in range(1, count + 1):
        name = f"{family}-{index}"
        link_checkpoint(staged, sources[(index - 1) % len(sources)], model_dir, name)
        names.append(name)
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    (model_dir / "checkpoint").write_text("\n".join(lines) + "\n")
    return names


def once(model_dir: Path, db: Path, task: str, tree: Path | None = None) -> dict[str, Any]:
    """`watch --once` of the current code (or of the release at `tree`: PYTHONPATH=tree, run from the
    database's folder, outside the checkout): seconds from "database ready" (the model built, the
    database open) to "stopped" (everything `watch` does: the scan, the evaluations, the rows, the
    actions, closing), the seconds to the process's exit (the interpreter's and TensorFlow's teardown
    added, about a second for either version), and the rows."""
    log = db.with_suffix(".log")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    with open(log, "wb") as errors:
        process = subprocess.run([sys.executable, "-m", "evaluator", "watch", str(model_dir), "--task", task,
                                  "--db", f"sqlite:///{db}", "--once", "--log-format", "json", "--device", "auto"],
                                 stdout=subprocess.DEVNULL, stderr=errors, cwd=db.parent if tree is not None else ROOT,
                                 env=env, timeout=3600)
    ended = time.time()
    events = [json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]

    def when(event: str) -> float:
        stamp = next(e["timestamp"] for e in events if e.get("event") == event)
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    began, stopped = when("database ready"), when("stopped")
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    statuses = dict(connection.execute("SELECT status, count(*) FROM evaluations GROUP BY status").fetchall())
    connection.close()
    return {"exit": process.returncode, "seconds": stopped - began, "to_exit_s": ended - began, "rows": statuses}


def bare(task: Any, names: list[str], model_dir: Path, batch_size: int) -> float:
    """Seconds for the hand-written loop (one Saver, restore + session.run per checkpoint) over `names`."""
    from bench.baseline import HandWritten
    from evaluator.models.device import select_device

    hand = HandWritten(task, select_device("auto").config, batch_size)
    hand(str(model_dir / names[0]))  # warm up
    start = time.perf_counter()
    for name in names:
        hand(str(model_dir / name))
    return time.perf_counter() - start


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
    """The backlog of `catchup_small` digits checkpoints and of `catchup_big` 3.7 M-parameter ones."""
    train = digits_trainer()  # puts examples/digits on sys.path
    import task as digits_task  # examples/digits/task.py

    from bench import workload

    previous = previous_release()
    tree = Path(previous["path"]) if "path" in previous else None
    results: dict[str, Any] = {"previous_release": previous}
    staged = work / "catchup-digits-staged"
    train.train(str(staged), steps=20, save_every=1, max_to_keep=20, relative_paths=True)
    big_staged = work / "catchup-big-staged"
    workload.write_checkpoints(str(big_staged), 3)
    big_sources = sorted(p.name[: -len(".index")] for p in big_staged.glob("*.index"))
    for label, count, task, spec, source, sources, family, batch in (
            ("small", sizes.catchup_small, digits_task.TASK, DIGITS_TASK, staged,
             [f"model.ckpt-{i}" for i in range(1, 21)], "model.ckpt", digits_task.TASK.batch_size),
            ("big", sizes.catchup_big, workload.TASK, WORKLOAD_TASK, big_staged, big_sources, "model.ckpt",
             workload.TASK.batch_size)):
        model_dir = work / f"catchup-{label}"
        names = stage_links(source, sources, model_dir, count, family)
        figures: dict[str, Any] = {"checkpoints": count, "model": "digits, 2 layers" if label == "small" else
                                   f"{workload.parameters() / 1e6:.1f} M params"}
        ours = once(model_dir, work / f"catchup-{label}.db", spec)
        figures.update(evaluator_s=ours["seconds"], evaluator_to_exit_s=ours["to_exit_s"], evaluator_rows=ours["rows"],
                       evaluator_exit=ours["exit"])
        figures["bare_s"] = bare(task, names, model_dir, batch)
        figures["evaluator_per_s"] = count / ours["seconds"]
        figures["bare_per_s"] = count / figures["bare_s"]
        figures["ratio"] = figures["bare_s"] / ours["seconds"]  # rows/s as a fraction of the bare loop's
        if tree is not None:
            for output in ("eval", "export"):  # the previous release starts without this run's outputs
                shutil.rmtree(model_dir / output, ignore_errors=True)
            old = once(model_dir, work / f"catchup-{label}-previous.db", spec, tree)
            figures.update(previous_s=old["seconds"], previous_to_exit_s=old["to_exit_s"], previous_rows=old["rows"],
                           previous_exit=old["exit"],
                           previous_per_s=count / old["seconds"], previous_ratio=figures["bare_s"] / old["seconds"])
        results[label] = figures
    return {"catchup": results}


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "catchup" not in results:
        return []
    catchup = results["catchup"]
    previous = catchup["previous_release"]
    rows: list[Row] = []
    for label in ("small", "big"):
        fig = catchup[label]
        rows_said = ", ".join(f"{n} {status}" for status, n in sorted(fig["evaluator_rows"].items()))
        exit_said = f", exit {fig['evaluator_exit']}" if fig["evaluator_exit"] else ""
        then = (f"previous release ({previous['commit'][:7]}): {fig['previous_s']:.1f} s, "
                f"{fig['previous_per_s']:.1f}/s, ratio {fig['previous_ratio']:.2f}" if "previous_ratio" in fig
                else not_measured(previous))
        rows.append((f"11. catch-up: `watch --once` over a backlog of {fig['checkpoints']:,} checkpoints ({fig['model']})",
                     f"{fig['evaluator_s']:.1f} s, {fig['evaluator_per_s']:.1f}/s, ratio {fig['ratio']:.2f} "
                     f"(rows/s as a fraction of the bare loop's; {rows_said}{exit_said})",
                     f"bare loop: {fig['bare_s']:.1f} s, {fig['bare_per_s']:.1f}/s; {then}",
                     ">= 0.5 (small)" if label == "small" else "", met(fig["ratio"] >= 0.5) if label == "small" else ""))
    return rows
