"""`evaluator workers`: the `watch` processes sharing one database."""

from __future__ import annotations

import sys
from typing import Any

import click

from evaluator.cli.options import db_option


@click.command()
@db_option
@click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True)
def workers(db_url: str | None, fmt: str) -> int:
    """Show the `watch` processes sharing the database: host, pid, what each evaluates now, and
    the age of each one's heartbeat (alive while younger than its --lease; a worker that died
    shows as gone, and another takes its claims over).

    \b
    Examples:
      evaluator workers --db postgresql+psycopg://evaluator@db-host/evaluations
    """
    import json

    from evaluator.store import Store, resolve_url

    with Store.open(resolve_url(db_url), create=False) as store:
        found = store.workers()
        now = store.clock()  # heartbeats are the database's times: ages by its clock, not this machine's
    if fmt == "json":
        click.echo(json.dumps([{
            "owner": w.owner, "host": w.host, "pid": w.pid, "alive": w.alive(now), "model_dirs": w.model_dirs,
            "evaluating": w.evaluating, "evaluating_for_s": _age(w.evaluating_since, now),
            "heartbeat_age_s": _age(w.heartbeat_at, now), "lease_s": w.lease, "started_at": w.started_at.isoformat(),
        } for w in found], indent=2))
        return 0
    if not found:
        click.echo("no workers: no `evaluator watch` is using this database", err=True)
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for column in ("host", "pid", "status", "heartbeat", "evaluating", "for", "watching"):
        table.add_column(column)
    for w in found:
        status = "[green]alive[/green]" if w.alive(now) else "[red]gone[/red]"
        table.add_row(w.host, str(w.pid), status, f"{_age(w.heartbeat_at, now):.0f} s ago",
                      w.evaluating or "idle", f"{_age(w.evaluating_since, now):.0f} s" if w.evaluating_since else "",
                      ", ".join(w.model_dirs))
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def _age(when: Any, now: Any) -> float | None:
    return None if when is None else round((now - when).total_seconds(), 1)
