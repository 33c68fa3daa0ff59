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
