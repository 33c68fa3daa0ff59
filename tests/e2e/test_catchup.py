"""End to end, a backlog present at start (a sweep, downtime): claimed, evaluated and recorded in
batches, with every guarantee of one checkpoint at a time: one row each, one TensorBoard point per
checkpoint and metric, the best kept the same as `report --best`, and the numbers of a lone run."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.actions.test_summaries import points
from tests.conftest import read_rows, run_cli, sqlite_url, train

pytestmark = pytest.mark.slow

COUNT = 240


def backlog(tmp_path: Path) -> Path:
    """COUNT checkpoints: hard links of 12 trained ones, under names model.ckpt-1..COUNT."""
    staged = tmp_path / "staged"
    train(staged, steps=12, save_every=1, max_to_keep=12, relative_paths=True)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    names = []
    for index in range(1, COUNT + 1):
        source = f"model.ckpt-{(index - 1) % 12 + 1}"
        for path in staged.glob(source + ".*"):
            os.link(path, model_dir / (f"model.ckpt-{index}" + path.name[len(source):]))
        names.append(f"model.ckpt-{index}")
    (model_dir / "checkpoint").write_text(f'model_checkpoint_path: "{names[-1]}"\n'
                                          + "".join(f'all_model_checkpoint_paths: "{n}"\n' for n in names))
    return model_dir


def test_a_backlog_is_evaluated_in_batches_exactly_once(tmp_path: Path, db: Path) -> None:
    model_dir = backlog(tmp_path)
    result = run_cli("watch", str(model_dir), "--task", "examples/digits/task.py:TASK", "--once", "--db",
                     sqlite_url(db), "--keep-best", "3", "--log-format", "json", "--log-level", "debug", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(db, model_dir)
    assert Counter(r["checkpoint"] for r in rows) == {f"model.ckpt-{i}": 1 for i in range(1, COUNT + 1)}
    assert all(r["status"] == "ok" for r in rows)
    by_step = {r["step"]: r for r in rows}
    # A link of the same checkpoint gives the same numbers whichever batch it was in (step from the name
    # here: the trained global_step of the source is restored, so compare by source).
    sources: dict[str, set[float]] = {}
    for row in rows:
        sources.setdefault(row["fingerprint"], set()).add(row["accuracy"])
    assert len(sources) == 12 and all(len(values) == 1 for values in sources.values())

    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "evaluated" for e in events) == COUNT
    assert sum(e["event"] == "evaluation started" for e in events) == COUNT
    assert not any(e["event"] == "claimed by another evaluator" for e in events)

    drawn = points(model_dir / "eval")
    assert Counter((step, tag) for step, tag, _ in drawn) == {(s, t): 1 for s in by_step for t in ("accuracy", "loss")}
    assert all(value == pytest.approx(by_step[step][tag]) for step, tag, value in drawn)

    # The links share their source's global_step (the row's step), so equal rows tie: compare values.
    best = json.loads(run_cli("report", "--db", sqlite_url(db), "--best", "--format", "json").stdout)
    kept = json.loads((model_dir / "export" / "best" / "best.json").read_text())
    top = sorted((r["accuracy"] for r in rows), reverse=True)[:3]
    assert [k["value"] for k in kept["kept"]] == pytest.approx(top)
    assert best[0]["accuracy"] == pytest.approx(top[0])
    by_name = {r["checkpoint"]: r for r in rows}
    assert all(by_name[k["checkpoint"]]["accuracy"] == pytest.approx(k["value"]) for k in kept["kept"])
