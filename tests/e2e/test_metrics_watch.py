"""End to end, as a user with a task of their own metrics runs it: `watch --once` with two validation
sets, then `report` in every form; every value the log said is in the rows and the report."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, sqlite_url, train

pytestmark = pytest.mark.slow
METRICS_TASK = f"{ROOT / 'examples' / 'digits' / 'task.py'}:METRICS"
SETS = ("clean", "noisy")
NAMES = ("accuracy", "loss", "auc:2", "top_k_accuracy:3", "f1", "auc", "recall:8", "brier", "examples")


def test_two_sets_and_task_metrics_through_the_cli(tmp_path: Path, db: Path) -> None:
    model_dir = tmp_path / "model"
    saved = train(model_dir, steps=60, save_every=20)
    url = sqlite_url(db)
    done = run_cli("watch", str(model_dir), "--task", METRICS_TASK, "--db", url, "--once", "--metric", "auc:2",
                   "--log-format", "json")
    assert done.returncode == 0, done.stderr
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    evaluated = [e for e in logged if e["event"] == "evaluated"]
    assert [e["checkpoint"] for e in evaluated] == [Path(p).name for p in saved]
    built = next(e for e in logged if e["event"] == "evaluation model built")
    assert built["validation_sets"] == list(SETS) and built["metrics"]["brier"] == "min"

    report = run_cli("report", "--db", url, "--format", "json")
    rows = json.loads(report.stdout)
    assert len(rows) == 3
    for row, line in zip(rows, evaluated):
        assert list(row["metrics"]) == list(SETS)
        for dataset in SETS:
            assert list(row["metrics"][dataset]) == list(NAMES)
            for name in NAMES:
                assert row["metrics"][dataset][name] == pytest.approx(line[f"{dataset}/{name}"], abs=1e-6)
        # today's fields hold the first set's figures
        assert (row["accuracy"], row["loss"], row["examples"]) == (
            row["metrics"]["clean"]["accuracy"], row["metrics"]["clean"]["loss"], 360)

    by_brier = json.loads(run_cli("report", "--db", url, "--format", "json", "--best-by", "brier",
                                  "--dataset", "noisy").stdout)
    lowest = min(rows, key=lambda r: r["metrics"]["noisy"]["brier"])
    assert [r["checkpoint"] for r in by_brier if r["best"]] == [lowest["checkpoint"]]

    table = run_cli("report", "--db", url, "--dataset", "noisy", "--metric", "f1", "--metric", "brier",
                    "--best-by", "brier").stdout
    assert "validation set noisy" in table and "brier" in table and "top_k_accuracy" not in table
    assert f"★ best brier: {lowest['metrics']['noisy']['brier']:.4f}" in table

    columns = list(csv.DictReader(io.StringIO(run_cli("report", "--db", url, "--format", "csv", "--metric",
                                                      "recall:8", "--dataset", "noisy").stdout)))
    assert [float(c["recall:8"]) for c in columns] == pytest.approx([r["metrics"]["noisy"]["recall:8"] for r in rows])


def test_report_options_on_named_sets(tmp_path: Path, db: Path) -> None:
    """What a new user tried: --dataset alone marks the best (accuracy on that set); CSV gives that
    set's accuracy with a dataset column; a metric or set no row has is a one-line error that lists
    what there is; metrics beyond the table's width are said to be hidden; --best-by is shown."""
    model_dir = tmp_path / "model"
    train(model_dir, steps=60, save_every=20)
    url = sqlite_url(db)
    assert run_cli("watch", str(model_dir), "--task", METRICS_TASK, "--db", url, "--once").returncode == 0
    rows = json.loads(run_cli("report", "--db", url, "--format", "json").stdout)
    noisy_best = max(rows, key=lambda r: (r["metrics"]["noisy"]["accuracy"], -r["step"]))

    table = run_cli("report", "--db", url, "--dataset", "noisy").stdout
    assert f"★ best accuracy: {noisy_best['metrics']['noisy']['accuracy']:.4f}" in table
    assert "1 more metric(s) not shown" in table  # 7 metrics, 6 columns
    by_brier = run_cli("report", "--db", url, "--metric", "f1", "--best-by", "brier").stdout
    assert "brier" in by_brier.splitlines()[2]  # the column the best was chosen by is shown
    best_only = json.loads(run_cli("report", "--db", url, "--best", "--dataset", "noisy", "--format", "json").stdout)
    assert [r["checkpoint"] for r in best_only] == [noisy_best["checkpoint"]]

    lines = list(csv.DictReader(io.StringIO(run_cli("report", "--db", url, "--format", "csv", "--dataset",
                                                    "noisy").stdout)))
    assert {line["dataset"] for line in lines} == {"noisy"}
    assert [float(line["accuracy"]) for line in lines] == pytest.approx([r["metrics"]["noisy"]["accuracy"] for r in rows])

    for args, fragment in ((["--metric", "top5"], "no row has the metric 'top5'; there are accuracy, auc"),
                           (["--best-by", "nosuch"], "no row has the metric 'nosuch'"),
                           (["--dataset", "nosuch"], "no row has the validation set 'nosuch'; there are clean, noisy")):
        bad = run_cli("report", "--db", url, *args)
        assert bad.returncode == 2 and fragment in bad.stderr and "Traceback" not in bad.stderr
