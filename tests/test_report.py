"""report: table, JSON and CSV renderings of a history."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from typing import Any

from evaluator.evaluation import Evaluation, History, Status
from evaluator.report import FIELDS, JSON_FIELDS, records, render

WHEN = datetime(2026, 11, 23, 12, 0, 5, tzinfo=timezone.utc)


def history() -> History:
    ok = Evaluation(model_dir="/jobs/a", checkpoint="model.ckpt-200", step=200, status=Status.OK,
                    accuracy=0.9125, loss=0.31, examples=360, ema_source="tf1-names", restore_seconds=0.01,
                    eval_seconds=0.2, device="cpu", evaluated_at=WHEN, started_at=WHEN, detected_at=WHEN)
    missing = Evaluation(model_dir="/jobs/a", checkpoint="model.ckpt-300", step=300, status=Status.MISSING,
                         evaluated_at=WHEN, error="model.ckpt-300 was deleted before it could be read")
    other = Evaluation(model_dir="/jobs/b", checkpoint="ckpt-1", step=1, status=Status.OK, accuracy=0.5,
                       loss=1.0, examples=10, ema_source="none", evaluated_at=WHEN)
    return History(rows=[ok, missing, other], best={("/jobs/a", "default"): ok, ("/jobs/b", "default"): other})


def rendered(fmt: str) -> str:
    out = io.StringIO()
    render(history(), fmt, out)
    return out.getvalue()


def test_json_has_the_documented_fields() -> None:
    data = json.loads(rendered("json"))
    assert [tuple(d) for d in data] == [JSON_FIELDS] * 3
    first = data[0]
    assert first["model_dir"] == "/jobs/a" and first["checkpoint"] == "model.ckpt-200"
    assert (first["step"], first["accuracy"], first["loss"], first["examples"]) == (200, 0.9125, 0.31, 360)
    assert (first["ema"], first["ema_source"], first["status"], first["best"]) == (True, "tf1-names", "ok", True)
    assert first["evaluated_at"] == "2026-11-23T12:00:05+00:00"
    assert data[1]["status"] == "missing" and data[1]["accuracy"] is None and data[1]["best"] is False


def test_csv_matches_json() -> None:
    rows = list(csv.DictReader(io.StringIO(rendered("csv"))))
    assert len(rows) == 3 and tuple(rows[0]) == FIELDS
    assert rows[0]["accuracy"] == "0.9125" and rows[1]["accuracy"] == "" and rows[1]["status"] == "missing"


def test_table_marks_the_best_and_notes_errors() -> None:
    text = rendered("table")
    assert "/jobs/a" in text and "/jobs/b" in text
    assert "0.9125 ★" in text
    assert "★ best accuracy: 0.9125, step 200 (model.ckpt-200)" in text
    assert "missing" in text and "was deleted before it could be read" in text


def test_records_of_an_empty_history() -> None:
    assert list(records(History(rows=[]))) == []
    out = io.StringIO()
    render(History(rows=[]), "json", out)
    assert json.loads(out.getvalue()) == []


def test_json_streams_any_number_of_rows_as_one_valid_document() -> None:
    """JSON is written row by row (constant memory), and is still one array json can read."""
    one = history().rows[0]
    rows = (one for _ in range(5000))  # a generator: nothing is held
    out = io.StringIO()
    render(History(rows=rows, best={}), "json", out)  # type: ignore[arg-type]
    data = json.loads(out.getvalue())
    assert len(data) == 5000 and data[0]["checkpoint"] == "model.ckpt-200"


def test_csv_spells_booleans_as_json_does_and_floats_carry_no_noise() -> None:
    noisy = Evaluation(model_dir="/jobs/c", checkpoint="m-1", step=1, status=Status.OK, accuracy=0.8944444444444445,
                       loss=0.5855792171735731, examples=360, ema_source="keras", eval_seconds=0.0009530780007480644,
                       evaluated_at=WHEN, metrics={"validation": {"accuracy": 0.8944444444444445, "examples": 360}})
    history = History(rows=[noisy], best={("/jobs/c", "default"): noisy})
    out = io.StringIO()
    render(history, "csv", out)
    (line,) = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert (line["ema"], line["best"], line["accuracy"], line["eval_seconds"]) == ("true", "true", "0.8944444", "0.000953078")
    out = io.StringIO()
    render(history, "json", out)
    (record,) = json.loads(out.getvalue())
    assert record["accuracy"] == 0.8944444 and record["metrics"]["validation"] == {"accuracy": 0.8944444, "examples": 360}


class _Terminal(io.StringIO):
    """What rich sees as a terminal (its width from $COLUMNS)."""

    def isatty(self) -> bool:
        return True


def wide_history() -> History:
    """Six metrics, long step numbers and a long note: wider than 80 columns by far."""
    names = ("accuracy", "loss", "top_k_accuracy:5", "precision", "recall", "f1")
    rows = [Evaluation(model_dir="/data/experiments/sweep-2026/run-0042", checkpoint=f"model.ckpt-{step}",
                       step=step, status=Status.OK, evaluated_at=WHEN, examples=10000, ema_source="keras-use-ema",
                       accuracy=0.1234567 + i / 10, loss=12.3456789 - i,
                       metrics={"validation": {"accuracy": 0.1234567 + i / 10, "loss": 12.3456789 - i,
                                               **{n: 0.5 + i / 10 + k / 100 for k, n in enumerate(names[2:])}}})
            for i, step in enumerate((1_000_000_000, 1_000_000_500))]
    rows.append(Evaluation(model_dir=rows[0].model_dir, checkpoint="model.ckpt-1000001000", step=1_000_001_000,
                           status=Status.MISSING, evaluated_at=WHEN,
                           error="model.ckpt-1000001000 was deleted before it could be read (training's max_to_keep?)"))
    return History(rows=rows, best={(rows[0].model_dir, "default"): rows[1]})


def _plain_text(text: str) -> list[str]:
    import re

    return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]


def test_a_narrow_terminal_never_cuts_a_number(monkeypatch: Any) -> None:
    """An 80-column terminal: columns are left out (the caption says which), the note wraps, and
    every number shown is whole: no `0.9…`."""
    monkeypatch.setenv("COLUMNS", "80")
    out = _Terminal()
    render(wide_history(), "table", out, ("accuracy", "loss", "top_k_accuracy:5", "precision", "recall", "f1"))
    lines = _plain_text(out.getvalue())
    text = "\n".join(lines)
    assert "…" not in text and max(len(line) for line in lines) <= 80, text
    for step in ("1000000000", "1000000500", "1000001000"):
        assert step in text
    for value in ("0.1235", "0.2235", "12.3457", "11.3457"):
        assert value in text, value
    words = " ".join(text.split())  # the caption wraps at 80 columns too
    assert "not shown at this width:" in words and "evaluated" in words.split("not shown at this width:")[1]


def test_a_wide_terminal_wraps_the_note_instead_of_squeezing_numbers(monkeypatch: Any) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    out = _Terminal()
    render(wide_history(), "table", out, ("accuracy", "loss"))
    text = "\n".join(_plain_text(out.getvalue()))
    assert "…" not in text and "not shown" not in text
    assert "deleted before it" in text and "model.ckpt-1000000500" in text and "12.3457" in text


def test_piped_tables_are_plain_rows_at_their_natural_width() -> None:
    """Not a terminal: every column in full, nothing cut or wrapped, no padding after the last column."""
    out = io.StringIO()
    render(wide_history(), "table", out, ("accuracy", "loss", "top_k_accuracy:5", "precision", "recall", "f1"))
    lines = out.getvalue().splitlines()
    assert all(line == line.rstrip() for line in lines)
    assert "\x1b[" not in out.getvalue() and "…" not in out.getvalue()
    (missing,) = [line for line in lines if "1000001000" in line and "missing" in line]
    assert missing.endswith("was deleted before it could be read (training's max_to_keep?)")
    assert "not shown" not in out.getvalue()
