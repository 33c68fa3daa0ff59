"""report: table, JSON and CSV renderings of a history."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone

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
