"""Bench stage `catchup`: a backlog present at start (a sweep, downtime), evaluated by `watch --once`,
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
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
DIGITS_TASK = f"{DIGITS / 'task.py'}:TASK"
WORKLOAD_TASK = f"{ROOT / 'bench' / 'workload.py'}:TASK"
#: The release before this one (what the figures are compared with): its source is checked out
#: beside the repository as a git worktree and run with the same interpreter.
PREVIOUS = "6b3f6e2"


def previous_release() -> Path | None:
    """A checkout of the previous release (a git worktree), made if missing; None outside a git clone."""
    tree = Path(os.environ.get("BENCH_PREVIOUS_TREE", f"/tmp/evaluator-release-{PREVIOUS}"))
    if (tree / "evaluator" / "__init__.py").exists():
        return tree
    made = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), PREVIOUS],
                          capture_output=True, text=True)
    return tree if made.returncode == 0 else None


def stage_links(staged: Path, sources: list[str], model_dir: Path, count: int, family: str) -> list[str]:
    """`count` checkpoints in `model_dir`, each a hard link of one of `sources` (round robin) named
    `family-N`, and a state file listing them all."""
    model_dir.mkdir(parents=True)
    names = []
    for index in range(1, count + 1):
        source = sources[(index - 1) % len(sources)]
        name = f"{family}-{index}"
        for path in staged.glob(source + ".*"):
            os.link(path, model_dir / (name + path.name[len(source):]))
        names.append(name)
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    (model_dir / "checkpoint").write_text("\n".join(lines) + "\n")
    return names


def once(model_dir: Path, db: Path, task: str, tree: Path | None = None) -> dict[str, Any]:
    """`watch --once` of the current code (or the release at `tree`): seconds from "database ready"
    (the model built, the database open) to the exit, and the rows."""
    log = db.with_suffix(".log")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    with open(log, "wb") as errors:
        process = subprocess.run([sys.executable, "-m", "evaluator", "watch", str(model_dir), "--task", task,
                                  "--db", f"sqlite:///{db}", "--once", "--log-format", "json", "--device", "auto"],
                                 stdout=subprocess.DEVNULL, stderr=errors, cwd=tree or ROOT, env=env, timeout=3600)
    ended = time.time()
    ready = next(json.loads(line)["timestamp"] for line in log.read_text(errors="replace").splitlines()
                 if line.startswith("{") and '"database ready"' in line)
    began = datetime.fromisoformat(ready.replace("Z", "+00:00")).timestamp()
    import sqlite3

    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    statuses = dict(connection.execute("SELECT status, count(*) FROM evaluations GROUP BY status").fetchall())
    connection.close()
    return {"exit": process.returncode, "seconds": ended - began, "rows": statuses}


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


def measure(work: Path, small: int, big: int) -> dict[str, Any]:
    """The backlog of `small` digits checkpoints and of `big` 3.7 M-parameter ones."""
    sys.path.insert(0, str(DIGITS))
    import task as digits_task  # noqa: E402  (examples/digits/task.py)
    import train  # noqa: E402

    from bench import workload

    tree = previous_release()
    results: dict[str, Any] = {"previous_release": PREVIOUS if tree else None}
    staged = work / "catchup-digits-staged"
    train.train(str(staged), steps=20, save_every=1, max_to_keep=20, relative_paths=True)
    big_staged = work / "catchup-big-staged"
    workload.write_checkpoints(str(big_staged), 3)
    big_sources = sorted(p.name[: -len(".index")] for p in big_staged.glob("*.index"))
    for label, count, task, spec, source, sources, family, batch in (
            ("small", small, digits_task.TASK, DIGITS_TASK, staged, [f"model.ckpt-{i}" for i in range(1, 21)],
             "model.ckpt", digits_task.TASK.batch_size),
            ("big", big, workload.TASK, WORKLOAD_TASK, big_staged, big_sources, "model.ckpt", workload.TASK.batch_size)):
        model_dir = work / f"catchup-{label}"
        names = stage_links(source, sources, model_dir, count, family)
        figures: dict[str, Any] = {"checkpoints": count}
        ours = once(model_dir, work / f"catchup-{label}.db", spec)
        figures.update(evaluator_s=ours["seconds"], evaluator_rows=ours["rows"], evaluator_exit=ours["exit"])
        figures["bare_s"] = bare(task, names, model_dir, batch)
        figures["evaluator_per_s"] = count / ours["seconds"]
        figures["bare_per_s"] = count / figures["bare_s"]
        figures["ratio"] = figures["bare_s"] / ours["seconds"]  # rows/s as a fraction of the bare loop's
        if tree is not None:
            for output in ("eval", "export"):  # the previous release starts without this run's outputs
                shutil.rmtree(model_dir / output, ignore_errors=True)
            previous = once(model_dir, work / f"catchup-{label}-previous.db", spec, tree)
            figures.update(previous_s=previous["seconds"], previous_rows=previous["rows"],
                           previous_ratio=figures["bare_s"] / previous["seconds"])
        results[label] = figures
    return {"catchup": results}
