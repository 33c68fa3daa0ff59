"""plot: the metrics by step, one line per run, the best marked; PNG and SVG, via the CLI."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from evaluator.evaluation import Evaluation, History, Status
from evaluator.plot import series
from evaluator.store import Store
from tests.conftest import run_cli, sqlite_url

WHEN = datetime(2026, 11, 30, tzinfo=timezone.utc)


def rows(model_dir: str, accuracies: list[float]) -> list[Evaluation]:
    return [Evaluation(model_dir, f"model.ckpt-{10 * i}", 10 * i, Status.OK, WHEN, fingerprint=str(i), accuracy=a,
                       loss=1 - a, examples=10, metrics={"validation": {"accuracy": a, "loss": 1 - a, "examples": 10}},
                       goals={"accuracy": "max", "loss": "min"}) for i, a in enumerate(accuracies, start=1)]


def test_series_per_run_with_the_best_point() -> None:
    a, b = rows("/runs/a", [0.5, 0.9, 0.7]), rows("/runs/b", [0.6, 0.65])
    history = History(rows=[*a, *b], best={("/runs/a", "default"): a[1], ("/runs/b", "default"): b[1]})
    found = series(history, "accuracy", None)
    assert [(s.label, s.steps, s.values, s.best) for s in found] == [
        ("a", [10, 20, 30], [0.5, 0.9, 0.7], (20, 0.9)), ("b", [10, 20], [0.6, 0.65], (20, 0.65))]


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_the_cli_writes_a_picture(tmp_path: Path, suffix: str) -> None:
    db = tmp_path / "e.db"
    store = Store.open(sqlite_url(db), create=True)
    store.upgrade()
    store.record_many([*rows("/runs/a", [0.5, 0.9, 0.7]), *rows("/runs/b", [0.6, 0.65])])
    out = tmp_path / f"runs{suffix}"
    done = run_cli("plot", "--db", str(db), "-o", str(out))  # a plain path is a SQLite file
    assert done.returncode == 0, done.stderr
    assert "4 line(s) of accuracy, loss" in done.stdout  # two runs, two panels
    data = out.read_bytes()
    if suffix == ".png":
        assert data.startswith(b"\x89PNG") and len(data) > 20_000
    else:
        assert b"<svg" in data and b"best 0.9 @ 20" in data


def test_nothing_to_plot_and_a_bad_suffix_say_so(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    store = Store.open(sqlite_url(db), create=True)
    store.upgrade()
    store.record_many(rows("/runs/a", [0.5]))
    bad = run_cli("plot", "--db", str(db), "-o", str(tmp_path / "x.jpg"))
    assert bad.returncode == 2 and "write a .png or a .svg file" in bad.stderr
    none = run_cli("plot", "--db", str(db), "--model-dir", str(tmp_path), "-o", str(tmp_path / "x.png"))
    assert none.returncode == 4 and "no evaluations recorded" in none.stderr
