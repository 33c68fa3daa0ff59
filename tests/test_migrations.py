"""migrations: the Alembic history matches the models, upgrades and downgrades cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic import command

from evaluator.store import Store, alembic_config
from tests.conftest import sqlite_url


def test_models_and_migrations_agree(db: Path) -> None:
    """`alembic check`: autogenerate finds nothing to add (a model change without a migration fails here)."""
    store = Store.open(sqlite_url(db), create=True)
    store.upgrade()
    cfg = alembic_config()
    with store.engine.connect() as connection:
        cfg.attributes["connection"] = connection
        command.check(cfg)


def test_downgrade_to_base_and_back(db: Path) -> None:
    store = Store.open(sqlite_url(db), create=True)
    store.upgrade()
    cfg = alembic_config()
    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "base")
    assert store.revision() is None
    store.upgrade()
    assert store.revision() == Store.head_revision()


def test_migrations_ship_inside_the_package() -> None:
    location = Path(alembic_config().get_main_option("script_location"))
    assert (location / "env.py").is_file()
    assert any(location.joinpath("versions").glob("0001_*.py"))


def test_upgrading_a_database_with_rows_keeps_them(db: Path) -> None:
    """0001 -> head on a database written by the first release: rows intact, the index added."""
    import sqlite3

    store = Store.open(sqlite_url(db), create=True)
    cfg = alembic_config()
    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")
    raw = sqlite3.connect(db)
    raw.execute("INSERT INTO evaluations (model_dir, checkpoint, step, status, accuracy, evaluated_at) "
                "VALUES ('/m', 'model.ckpt-1', 1, 'ok', 0.5, '2026-11-23 12:00:00')")
    raw.commit()
    store.upgrade()
    assert store.revision() == Store.head_revision()
    assert [r.accuracy for r in store.history("/m").rows] == [0.5]
    indexes = {row[1] for row in raw.execute("PRAGMA index_list('evaluations')")}
    assert "ix_evaluations_model_dir_name_status_accuracy" in indexes
    (row,) = raw.execute("SELECT name, fingerprint, checkpoint, accuracy FROM evaluations").fetchall()
    assert row == ("default", "", "model.ckpt-1", 0.5)  # the old row keeps its values, in the new key


def test_upgrading_from_0002_keeps_rows_and_the_new_key_works(db: Path) -> None:
    """0002 (the last release) with rows -> head: every row kept, readable, and a restarted
    training's checkpoint of the same name gets a row of its own next to them."""
    import sqlite3
    from datetime import datetime, timezone

    from evaluator.evaluation import Evaluation, Status

    store = Store.open(sqlite_url(db), create=True)
    cfg = alembic_config()
    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0002")
    raw = sqlite3.connect(db)
    for step in (100, 200, 300):
        raw.execute("INSERT INTO evaluations (model_dir, checkpoint, step, status, accuracy, loss, examples, ema, "
                    "evaluated_at) VALUES ('/m', ?, ?, 'ok', 0.5, 0.7, 360, 1, '2026-11-23 12:00:00')",
                    (f"model.ckpt-{step}", step))
    raw.execute("INSERT INTO evaluations (model_dir, checkpoint, step, status, error, evaluated_at) "
                "VALUES ('/m', 'model.ckpt-400', 400, 'missing', 'deleted', '2026-11-23 12:00:00')")
    raw.commit()
    store.upgrade()
    rows = store.history("/m").rows
    assert [(r.checkpoint, r.status.value, r.accuracy, r.name, r.fingerprint) for r in rows] == [
        ("model.ckpt-100", "ok", 0.5, "default", ""), ("model.ckpt-200", "ok", 0.5, "default", ""),
        ("model.ckpt-300", "ok", 0.5, "default", ""), ("model.ckpt-400", "missing", None, "default", "")]
    assert [r.ema_source for r in rows] == ["tf1-names"] * 3 + [None]  # ema=1 said: names (0004)
    assert [r.ema for r in rows] == [True] * 3 + [None]
    # an old ok row stands for whatever that name holds: not evaluated again
    when = datetime.now(timezone.utc)
    assert store.record(Evaluation("/m", "model.ckpt-100", 100, Status.OK, when, fingerprint="abc")) is False
    # an old missing row does not: a checkpoint of that name written later gets its row
    assert store.record(Evaluation("/m", "model.ckpt-400", 400, Status.OK, when, fingerprint="abc")) is True
    # steps beyond 32 bits fit
    assert store.record(Evaluation("/m", "model.ckpt-big", 2**62, Status.OK, when, fingerprint="x")) is True


def test_upgrading_from_0004_gives_old_rows_their_metrics_and_the_report_is_unchanged(db: Path) -> None:
    """0004 (before metrics) with rows -> 0005: each ok row's accuracy, loss and examples are in
    `metrics` under the set "validation"; the report renders the old rows as it did; `retry`'s
    forget removes a row's metrics with it."""
    import dataclasses
    import io
    import sqlite3

    from evaluator import report

    url = sqlite_url(db)
    store = Store.open(url, create=True)
    cfg = alembic_config()
    with store.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0004")
    raw = sqlite3.connect(db)
    for step, accuracy in ((100, 0.5), (200, 0.75)):
        raw.execute("INSERT INTO evaluations (model_dir, name, checkpoint, fingerprint, step, status, accuracy, loss, "
                    "examples, ema_source, evaluated_at) VALUES ('/m', 'default', ?, 'f', ?, 'ok', ?, 0.7, 360, "
                    "'tf1-names', '2026-11-23 12:00:00')", (f"model.ckpt-{step}", step, accuracy))
    raw.execute("INSERT INTO evaluations (model_dir, name, checkpoint, fingerprint, step, status, error, evaluated_at) "
                "VALUES ('/m', 'default', 'model.ckpt-300', '', 300, 'failed', 'bad', '2026-11-23 12:00:00')")
    raw.commit()
    store.upgrade()

    assert sorted(raw.execute("SELECT dataset, name, value, goal FROM metrics WHERE evaluation_id = 2")) == [
        ("validation", "accuracy", 0.75, "max"), ("validation", "examples", 360.0, None),
        ("validation", "loss", 0.7, "min")]
    rows = store.history("/m").rows
    assert [r.metrics for r in rows] == [{"validation": {"accuracy": 0.5, "loss": 0.7, "examples": 360}},
                                         {"validation": {"accuracy": 0.75, "loss": 0.7, "examples": 360}}, None]
    history = store.history("/m")
    # What the report showed before metrics existed: the same rows, their columns only.
    columns_only = dataclasses.replace(history, rows=[dataclasses.replace(r, metrics=None, goals=None)
                                                      for r in history.rows])
    for fmt in ("table", "csv"):
        before, after = io.StringIO(), io.StringIO()
        report.render(columns_only, fmt, before)
        report.render(history, fmt, after)
        assert after.getvalue() == before.getvalue()
    assert store.history("/m", best_by="loss").best[("/m", "default")].checkpoint == "model.ckpt-100"

    store.forget("/m", "default", ["ok"])
    assert raw.execute("SELECT count(*) FROM metrics").fetchone() == (0,)
