"""Stage `poll`: 7. what --poll misses of a fast trainer with max_to_keep=2, against inotify events."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import DIGITS, DIGITS_TASK, ROOT, Row, Watch, wait

if TYPE_CHECKING:
    from bench.run import Sizes


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
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


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "poll" not in results:
        return []
    rows: list[Row] = []
    poll = results["poll"]
    cells = [f"{mode}: {r['rows']} rows of {r['saved']} saves ({r['ok']} ok, {r['missing']} missing)"
             for mode, r in poll.items()]
    rows.append(("7. a fast trainer with max_to_keep=2: rows with events vs --poll", "; ".join(cells), "", "", ""))
    return rows
