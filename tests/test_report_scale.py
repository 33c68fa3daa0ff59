"""report at any size of the history: every query `report` makes reads a few index entries, not every
row (SQLite's EXPLAIN QUERY PLAN shows no full scan of `evaluations` or `metrics`, and SQLite does the
same work on 40 rows per evaluation as on 800), and `series`, the summary of which metrics each
evaluation has, stays right through record_many, forget and the migration's backfill, on SQLite and
on PostgreSQL (tests/pg.py)."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import event, text

from evaluator.evaluation import Evaluation, Status
from evaluator.store import Store, alembic_config
from tests.conftest import sqlite_url

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)

#: The store calls of each `report` form (what cli.report asks: known_metrics, then the history).
#: --best, --metric and --format json/csv ask the same as the plain form; they differ in rendering.
FORMS: dict[str, dict[str, Any]] = {
    "--last 10": {},
    "--dataset shifted": {"dataset": "shifted"},
    "--best-by loss": {"best_by": "loss"},
    "--best-by f1": {"best_by": "f1"},
    "--best-by f1 --dataset shifted": {"best_by": "f1", "dataset": "shifted"},
    "--root /sweep": {"root": "/sweep"},
    "--model-dir /sweep/a": {"model_dir": "/sweep/a"},
    "--model-dir /sweep/b --best-by accuracy": {"model_dir": "/sweep/b", "best_by": "accuracy"},
}
#: (model directory, name, validation sets) of the histories the scale tests fill.
GROUPS = [("/sweep/a", "default", ("clean", "shifted")), ("/sweep/a", "raw", ("clean", "shifted")),
          ("/sweep/b", "default", ("validation",))]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, db: Path) -> Iterator[Store]:
    url = sqlite_url(db) if request.param == "sqlite" else request.getfixturevalue("pg_url")
    opened = Store.open(url, create=True)
    opened.upgrade()
    yield opened
    opened.release()


@pytest.fixture
def sqlite_store(db: Path) -> Iterator[Store]:
    opened = Store.open(sqlite_url(db), create=True)
    opened.upgrade()
    yield opened
    opened.release()


def row(model_dir: str, checkpoint: str, step: int | None, metrics: dict[str, dict[str, float]] | None = None,
        name: str = "default", status: Status = Status.OK) -> Evaluation:
    first = next(iter(metrics.values())) if metrics else {}
    return Evaluation(model_dir=model_dir, checkpoint=checkpoint, step=step, status=status, name=name,
                      fingerprint="f", evaluated_at=T0 + timedelta(seconds=step or 0),
                      accuracy=first.get("accuracy"), loss=first.get("loss"),
                      examples=int(first["examples"]) if "examples" in first else None, metrics=metrics,
                      goals={"accuracy": "max", "loss": "min", "f1": "max"} if metrics else None,
                      error=None if status is Status.OK else "boom")


def fill(store: Store, per_group: int) -> None:
    """`per_group` rows in each of GROUPS: every 9th failed, one without a step, the accuracy a
    permutation of the steps (so the best is somewhere in the middle), f1 on every other row."""
    rows = []
    for model_dir, name, sets in GROUPS:
        for i in range(per_group):
            if i % 9 == 4:
                rows.append(row(model_dir, f"ckpt-{i}", i * 10, name=name, status=Status.FAILED))
                continue
            accuracy = ((i * 7919) % per_group) / per_group
            metrics = {s: {"accuracy": accuracy, "loss": 1 - accuracy + k, "examples": 100, **({"f1": accuracy / 2}
                                                                                              if i % 2 else {})}
                       for k, s in enumerate(sets)}
            rows.append(row(model_dir, f"ckpt-{i}", None if i == 1 else i * 10, metrics, name=name))
    assert store.record_many(rows) == len(rows)


def report(store: Store, model_dir: str | None = None, root: str | None = None, **asked: Any) -> int:
    """What `report` reads: the metrics there are, then the last 10 rows and the best of each evaluation."""
    store.known_metrics(model_dir, root)
    with store.streaming_history(model_dir, 10, root=root, **asked) as history:
        return len(list(history.rows)) + len(history.best)


def captured(store: Store) -> list[tuple[str, Any]]:
    """The statements `store` runs from now on, with their parameters."""
    seen: list[tuple[str, Any]] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    return seen


def series_state(store: Store) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]], int]:
    """(what `series` should hold, what it holds, metric rows pointing at a wrong or no series row)."""
    with store.engine.connect() as connection:
        expected = {tuple(r) for r in connection.execute(text(
            "SELECT DISTINCT e.model_dir, e.name, m.dataset, m.name FROM metrics m "
            "JOIN evaluations e ON e.id = m.evaluation_id"))}
        held = {tuple(r) for r in connection.execute(text("SELECT model_dir, name, dataset, metric FROM series"))}
        wrong = connection.execute(text(
            "SELECT count(*) FROM metrics m JOIN evaluations e ON e.id = m.evaluation_id "
            "LEFT JOIN series s ON s.id = m.series_id WHERE s.id IS NULL OR s.model_dir <> e.model_dir "
            "OR s.name <> e.name OR s.dataset <> m.dataset OR s.metric <> m.name")).scalar_one()
    return expected, held, wrong


def assert_series_right(store: Store) -> None:
    expected, held, wrong = series_state(store)
    assert held == expected
    assert wrong == 0


# -- the query plans and the work -------------------------------------------------------------

def test_no_report_query_scans_evaluations_or_metrics(sqlite_store: Store, db: Path) -> None:
    fill(sqlite_store, 40)
    statements = captured(sqlite_store)
    for asked in FORMS.values():
        assert report(sqlite_store, **asked) > 0
    plans: dict[str, list[str]] = {}
    with sqlite3.connect(db) as raw:
        for statement, parameters in statements:
            plans[statement] = [r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters)]
    assert len(plans) >= 10
    scans = {" ".join(s.split())[:120]: line for s, lines in plans.items() for line in lines
             if re.match(r"SCAN (evaluations|metrics)(_\d+)?\b", line)}
    assert scans == {}
    used = " ".join(line for lines in plans.values() for line in lines)
    for index in ("ix_evaluations_model_dir_name_step_id", "ix_evaluations_model_dir_name_id",
                  "ix_evaluations_model_dir_name_status_accuracy", "ix_evaluations_model_dir_name_status_loss",
                  "ix_metrics_series_id_value"):
        assert index in used


def _work(store: Store, asked: dict[str, Any]) -> int:
    """SQLite virtual-machine instructions (in hundreds) one report form takes."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.release()
    listener = event.listens_for(store.engine, "connect")(
        lambda dbapi_connection, record: dbapi_connection.set_progress_handler(count, 100))
    try:
        report(store, **asked)
    finally:
        event.remove(store.engine, "connect", listener)
        store.release()
    return steps[0]


def test_report_work_does_not_grow_with_the_history(tmp_path: Path) -> None:
    """Each form costs about the same on 40 and on 800 rows per evaluation (the release before this
    read every row: 20 times the work)."""
    stores = {}
    for size in (40, 800):
        stores[size] = Store.open(sqlite_url(tmp_path / f"{size}.db"), create=True)
        stores[size].upgrade()
        fill(stores[size], size)
    try:
        for form, asked in FORMS.items():
            small, large = _work(stores[40], asked), _work(stores[800], asked)
            assert large <= 1.25 * small + 5, (form, small, large)
    finally:
        for opened in stores.values():
            opened.release()


# -- the same answers ---------------------------------------------------------------------------

def test_rows_without_a_step_come_last_in_the_choice_and_first_in_the_order(store: Store) -> None:
    metrics = {"validation": {"accuracy": 0.5, "loss": 1.0, "examples": 10}}
    store.record_many([row("/m", "a", None, metrics), row("/m", "b", 100, metrics), row("/m", "c", None, metrics),
                       row("/m", "d", 200, metrics), row("/m", "e", 300, metrics)])
    assert [r.checkpoint for r in store.history("/m", last=4).rows] == ["c", "b", "d", "e"]
    assert [r.checkpoint for r in store.history("/m", last=2).rows] == ["d", "e"]
    assert [r.checkpoint for r in store.history("/m", last=10).rows] == ["a", "c", "b", "d", "e"]


def brute_best(store: Store, model_dir: str, name: str, metric: str, dataset: str, goal: str) -> str | None:
    """The best row's checkpoint by definition, from every row (the values in `fill` do not tie)."""
    rows = [r for r in store.history(model_dir, last=10**6).rows
            if r.name == name and r.status is Status.OK and metric in (r.metrics or {}).get(dataset, {})]
    if not rows:
        return None
    pick = max if goal == "max" else min
    return pick(rows, key=lambda r: r.metrics[dataset][metric]).checkpoint  # type: ignore[index]


def test_the_best_and_the_groups_of_every_form(store: Store) -> None:
    fill(store, 30)
    for asked in FORMS.values():
        history = store.history(**asked)
        groups = [(d, n) for d, n, _ in sorted(GROUPS) if d == asked.get("model_dir", d)
                  and (d + "/").startswith(asked.get("root", "").rstrip("/") + "/")]
        assert sorted({(r.model_dir, r.name) for r in history.rows}) == groups
        for model_dir, name, sets in GROUPS:
            if (model_dir, name) not in groups:
                continue
            dataset = asked.get("dataset", sets[0])
            metric = asked.get("best_by", "accuracy")
            expected = brute_best(store, model_dir, name, metric, dataset, "min" if metric == "loss" else "max")
            best = history.best.get((model_dir, name))
            assert (best.checkpoint if best else None) == expected, (asked, model_dir, name)
    assert store.history(root="/sweep/a/").rows == store.history(root="/sweep/a").rows
    assert store.history(root="/swee").rows == []
    assert store.history(model_dir="/sweep").rows == []
    assert store.known_metrics("/sweep/b") == {"validation": {"accuracy", "loss", "examples", "f1"}}
    assert set(store.known_metrics(root="/sweep")) == {"clean", "shifted", "validation"}
    assert store.known_metrics("/nowhere") == {}


# -- `series`, kept ------------------------------------------------------------------------------

def test_series_follow_record_many_and_forget(store: Store) -> None:
    both = {"clean": {"accuracy": 0.5, "loss": 1.0, "examples": 10}, "shifted": {"accuracy": 0.4, "loss": 2.0,
                                                                                  "examples": 10}}
    with_f1 = {"clean": {"accuracy": 0.6, "loss": 0.9, "examples": 10, "f1": 0.3}}
    rows = [row("/m", "ckpt-1", 1, both), row("/m", "ckpt-2", 2, with_f1), row("/m", "ckpt-3", 3, status=Status.FAILED),
            row("/m", "ckpt-1", 1, {"validation": {"accuracy": 0.1}}, name="raw"),
            row("/n", "ckpt-9", 9, status=Status.MISSING)]
    assert store.record_many(rows) == 5
    assert_series_right(store)
    assert store.known_metrics() == {"clean": {"accuracy", "loss", "examples", "f1"},
                                     "shifted": {"accuracy", "loss", "examples"}, "validation": {"accuracy"}}
    assert store.known_metrics("/n") == {}
    assert store.record_many(rows) == 0  # already there: nothing changes
    assert_series_right(store)

    store.forget("/m", "default", ["failed"])  # a row without metrics
    assert_series_right(store)
    assert "f1" in store.known_metrics("/m")["clean"]
    assert store.history("/m", best_by="f1").best[("/m", "default")].checkpoint == "ckpt-2"

    store.forget("/m", "default", ["ok"], checkpoint="ckpt-2")  # the only row with f1
    assert_series_right(store)
    assert store.known_metrics("/m")["clean"] == {"accuracy", "loss", "examples"}
    assert ("/m", "default") not in store.history("/m", best_by="f1").best

    store.forget("/m", "raw", [])  # every row of an evaluation
    assert_series_right(store)
    assert "validation" not in store.known_metrics()

    store.record(row("/m", "ckpt-4", 4, {"clean": {"accuracy": 0.7, "loss": 0.5, "f1": 0.2}}))  # f1 again
    assert_series_right(store)
    assert store.history("/m", best_by="f1").best[("/m", "default")].checkpoint == "ckpt-4"
    assert store.history("/m", dataset="clean").best[("/m", "default")].checkpoint == "ckpt-4"


def test_the_migration_fills_series_from_the_rows_there(store: Store) -> None:
    """0006 with rows (two evaluations, two sets) -> 0007: every metric row has its series, the
    report reads the same; down to 0006 and up again too."""
    cfg = alembic_config()
    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0006")
    with store.engine.begin() as connection:
        for ident, (model_dir, name, step) in enumerate([("/m", "default", 1), ("/m", "default", 2),
                                                         ("/m", "raw", 1), ("/o", "default", 5)], start=1):
            connection.execute(text(
                "INSERT INTO evaluations (id, model_dir, name, checkpoint, fingerprint, step, status, accuracy, loss, "
                "examples, evaluated_at) VALUES (:id, :d, :n, :c, 'f', :s, 'ok', :a, :l, 10, :t)"),
                {"id": ident, "d": model_dir, "n": name, "c": f"ckpt-{step}", "s": step, "a": step / 10,
                 "l": 1 / step, "t": T0.replace(tzinfo=None)})
            sets = ("validation",) if model_dir == "/o" else ("clean", "shifted")
            for dataset in sets:
                for metric, value, goal in (("accuracy", step / 10, "max"), ("loss", 1 / step, "min"),
                                            ("examples", 10.0, None)):
                    connection.execute(text("INSERT INTO metrics (evaluation_id, dataset, name, value, goal) "
                                            "VALUES (:e, :d, :n, :v, :g)"),
                                       {"e": ident, "d": dataset, "n": metric, "v": value, "g": goal})
        if store.engine.dialect.name == "postgresql":
            connection.execute(text("SELECT setval(pg_get_serial_sequence('evaluations', 'id'), 4)"))
    store.upgrade()
    assert store.revision() == Store.head_revision()
    assert_series_right(store)
    expected, _, _ = series_state(store)
    assert len(expected) == 3 * 2 + 3 * 2 + 3
    assert store.history("/m", dataset="shifted").best[("/m", "default")].checkpoint == "ckpt-2"
    assert store.history("/m", best_by="loss", dataset="clean").best[("/m", "default")].checkpoint == "ckpt-2"
    assert store.known_metrics("/o") == {"validation": {"accuracy", "loss", "examples"}}

    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0006")
    store.upgrade()
    assert_series_right(store)
    assert store.record(row("/m", "ckpt-3", 3, {"clean": {"accuracy": 0.9, "loss": 0.1}}))
    assert_series_right(store)
    assert store.history("/m", dataset="clean").best[("/m", "default")].checkpoint == "ckpt-3"


def test_forget_and_record_at_once_leave_no_metric_without_its_series(pg_url: str) -> None:
    """PostgreSQL, two writers: `retry` forgetting an evaluation's rows while `watch` records new
    ones with the same metrics. The series a new row points at is never dropped under it, and
    neither waits for the other forever (both lock series rows in one order)."""
    recorder, forgetter = Store.open(pg_url, create=True), Store.open(pg_url, create=True)
    recorder.upgrade()
    errors: list[BaseException] = []

    def record() -> None:
        try:
            for i in range(60):
                recorder.record(row("/m", f"ckpt-{i}", i, {"clean": {"accuracy": i / 60, "loss": 1.0, "f1": 0.5},
                                                           "shifted": {"accuracy": 0.1}}))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    writer = threading.Thread(target=record)
    writer.start()
    try:
        while writer.is_alive():
            forgetter.forget("/m", "default", [])
    finally:
        writer.join()
    assert errors == []
    assert_series_right(recorder)
    forgetter.forget("/m", "default", [])
    assert_series_right(recorder)
    assert recorder.known_metrics() == {}
    recorder.release()
    forgetter.release()
