"""`evaluator retry`: remove recorded rows so that `watch` evaluates those checkpoints again."""

from __future__ import annotations

import click

from evaluator.sources import normalize as normalize_model_dir
from evaluator.cli.options import db_option, name_option
from evaluator.evaluation import DEFAULT_NAME, Status


@click.command()
@click.option("--model-dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="The model directory whose rows to evaluate again.")
@name_option
@click.option("--status", "statuses", type=click.Choice([s.value for s in Status]), multiple=True,
              default=[Status.FAILED.value], show_default=True,
              help="Which rows (repeatable): failed by default; missing ones, or even ok ones.")
@click.option("--checkpoint", metavar="NAME", help="Only this checkpoint (e.g. model.ckpt-1200).")
@db_option
def retry(model_dir: str, name: str, statuses: tuple[str, ...], checkpoint: str | None,
          db_url: str | None) -> int:
    """Evaluate recorded checkpoints again, e.g. after fixing the task.

    Removes the matching rows so that `watch` evaluates those checkpoints again: a running
    `evaluator watch` within its --rescan interval, else the next one (or `watch --once`). A
    checkpoint whose files are gone by then gets a `missing` row.

    \b
    Examples:
      evaluator retry --model-dir ./model_dir                     # every failed checkpoint
      evaluator retry --model-dir ./model_dir --checkpoint model.ckpt-1200 --status ok
    """
    from evaluator.store import Store, resolve_url

    directory = normalize_model_dir(model_dir)
    with Store.open(resolve_url(db_url), create=False) as store:
        removed = store.forget(directory, name, list(statuses), checkpoint)
    if not removed:
        what = f"{checkpoint} " if checkpoint else ""
        click.echo(f"nothing to retry: no {'/'.join(statuses)} row {what}for {directory} (name {name})", err=True)
        return 0
    for row in removed:
        click.echo(f"{row.checkpoint}\tstep {row.step}\twas {row.status.value}")
    click.echo(f"{len(removed)} checkpoint(s) will be evaluated again by `evaluator watch {directory}`"
               + (f" --name {name}" if name != DEFAULT_NAME else ""), err=True)
    return 0
