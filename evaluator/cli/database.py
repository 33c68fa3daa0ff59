"""`evaluator db upgrade|current`: the database schema."""

from __future__ import annotations

import click

from evaluator.cli.options import db_option
from evaluator.errors import EXIT_UPGRADE_NEEDED


@click.group()
def db() -> None:
    """Manage the database schema (`watch` upgrades it by itself on start)."""


@db.command()
@db_option
def upgrade(db_url: str | None) -> int:
    """Create the database or bring its schema to the newest revision.

    \b
    Example:
      evaluator db upgrade --db sqlite:////var/lib/evaluator/evaluations.db
    """
    from evaluator.store import Store, describe, resolve_url

    url = resolve_url(db_url)
    with Store.open(url, create=True) as store:
        before = store.revision()
        store.upgrade()
        after = store.revision()
    change = "already up to date" if before == after else f"upgraded from {before or 'an empty database'}"
    click.echo(f"{describe(url)}: schema at revision {after} ({change})")
    return 0


@db.command()
@db_option
def current(db_url: str | None) -> int:
    """Show the database's schema revision and whether it needs `evaluator db upgrade`.

    Exits 5 when an upgrade is needed (or there is no schema yet), so scripts can test it; 2 when
    a newer evaluator wrote it.
    """
    from evaluator.errors import DatabaseError
    from evaluator.store import SchemaState, Store, describe, resolve_url

    url = resolve_url(db_url)
    with Store.open(url, create=False) as store:
        revision = store.revision()
        if store.schema_state() is SchemaState.AHEAD:
            raise DatabaseError(store.newer_message())
    head = Store.head_revision()
    state = "up to date" if revision == head else f"needs `evaluator db upgrade` (newest is {head})"
    click.echo(f"{describe(url)}: revision {revision or 'none'}, {state}")
    return 0 if revision == head else EXIT_UPGRADE_NEEDED
