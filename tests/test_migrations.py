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
    assert "ix_evaluations_model_dir_status_accuracy" in indexes
