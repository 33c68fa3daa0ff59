"""The history views: `evaluator report` (table, JSON, CSV) and `evaluator plot` (a picture)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Any

import click

from evaluator.sources import normalize as normalize_model_dir
from evaluator.cli.options import MAX_LAST, TABLE_ROWS, db_option
from evaluator.errors import EXIT_NO_ROWS
from evaluator.report import FORMATS as REPORT_FORMATS


@click.command()
@click.option("--last", type=click.IntRange(min=1, max=MAX_LAST), default=10, show_default=True, metavar="N",
              help=f"How many evaluations to show per model directory and name (the highest steps); "
                   f"a table shows at most {TABLE_ROWS}, JSON and CSV any number.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=str),
              help="Only this model directory. Default: every one in the database.")
@db_option
@click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="table",
              show_default=True, help="table for people; json and csv for scripts.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="A metric to show as a column (repeatable), e.g. top_k_accuracy:5. Default: the "
                   "set's metrics (table); CSV adds the columns; JSON always has every metric.")
@click.option("--dataset", metavar="NAME",
              help="The validation set whose metrics the columns show (accuracy, loss and examples "
                   "included) and the best is chosen on. Default: the task's first (or only) set.")
@click.option("--best-by", metavar="NAME",
              help="The metric the best row is chosen by, in its direction (accuracy and the like: "
                   "highest; loss and errors: lowest, as recorded). Default: accuracy, else loss.")
@click.option("--best", "best_only", is_flag=True,
              help="Only the best row of each model directory (and evaluation name).")
@click.option("--root", type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              help="Only the model directories below DIR (a sweep served by `watch --root`).")
def report(last: int, model_dir: str | None, db_url: str | None, fmt: str, metrics: tuple[str, ...],
           dataset: str | None, best_by: str | None, best_only: bool, root: str | None) -> int:
    """Show the most recent evaluations, by step, the best row marked.

    JSON is a list of objects with model_dir, name, checkpoint, fingerprint, step, status,
    accuracy, loss, examples (of the first validation set), metrics ({set: {metric: value,
    examples}}), ema, best, timings (restore_seconds, eval_seconds) and ISO 8601 UTC times
    (detected_at, started_at, evaluated_at). JSON and CSV are written as rows are read.
    Exit status 4 when --model-dir names a directory with no rows (never evaluated, or a typo).

    \b
    Examples:
      evaluator report --last 10
      evaluator report --best
      evaluator report --metric top_k_accuracy:5 --metric loss --dataset shifted
      evaluator report --best-by f1 --format csv
      evaluator report --model-dir ./model_dir --format json | jq '.[-1].metrics'
    """
    from evaluator.store import SchemaMissing, Store, resolve_url

    directory = normalize_model_dir(model_dir) if model_dir else None
    if fmt == "table" and last > TABLE_ROWS:
        click.echo(f"evaluator: a table shows the last {TABLE_ROWS} rows per evaluation; "
                   "--format csv or json for more", err=True)
        last = TABLE_ROWS
    with Store.open(resolve_url(db_url), create=False) as store:
        view = _View(directory, last, fmt, tuple(dict.fromkeys(metrics)), dataset, best_by, best_only,
                     normalize_model_dir(root) if root else None)
        try:
            _check_view(store, view)
            try:
                shown = _render(store, view)
            except SchemaMissing:  # `watch` may be creating it this very moment
                store.wait_for_schema(5.0)
                shown = _render(store, view)
        except BrokenPipeError:  # `evaluator report | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if not shown:
            where = f" for {view.directory}" if view.directory else (f" below {view.root}" if view.root else "")
            click.echo(f"evaluator: no evaluations recorded{where} in {store.url}", err=True)
            return EXIT_NO_ROWS if view.directory or view.root else 0
    return 0


@dataclass(frozen=True)
class _View:
    """What `report` was asked to show."""

    directory: str | None
    last: int
    fmt: str
    metrics: tuple[str, ...]
    dataset: str | None
    best_by: str | None
    best_only: bool = False
    root: str | None = None


def _check_view(store: Any, view: _View) -> None:
    """A metric or validation set that no row has is a typo: say which ones there are."""
    from evaluator.store import SchemaMissing

    try:
        known = store.known_metrics(view.directory, view.root)
    except SchemaMissing:
        return  # said where the report is rendered
    if not known:
        return
    if view.dataset is not None and view.dataset not in known:
        raise click.BadParameter(f"no row has the validation set {view.dataset!r}; there are {', '.join(sorted(known))}",
                                 param_hint="'--dataset'")
    names = known[view.dataset] if view.dataset else set().union(*known.values())
    for option, wanted in (("--metric", view.metrics), ("--best-by", (view.best_by,) if view.best_by else ())):
        unknown = [name for name in wanted if name not in names and name.rpartition("/")[2] not in names]
        if unknown:
            raise click.BadParameter(f"no row has the metric {unknown[0]!r}; there are "
                                     f"{', '.join(sorted(names - {'examples'}))}", param_hint=f"'{option}'")


def _render(store: Any, view: _View) -> int:
    """Write the report; returns how many rows it showed."""
    from evaluator import report as report_module

    with store.streaming_history(view.directory, view.last, view.best_by, view.dataset, view.root) as history:
        rows = history.rows if not view.best_only else iter(list(history.best.values()))
        counted = _Counted(rows)
        if view.fmt != "table":
            report_module.render(replace(history, rows=counted), view.fmt, sys.stdout, view.metrics)
            return counted.count
        listed = list(counted)
        if listed:
            report_module.render(replace(history, rows=listed), view.fmt, sys.stdout, view.metrics)
        return len(listed)


class _Counted:
    """An iterator that counts what went through it (a streamed report's rows)."""

    def __init__(self, items: Any) -> None:
        self._items = iter(items)
        self.count = 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        self.count += 1
        return item


@click.command()
@click.option("--model-dir", "model_dirs", multiple=True, type=click.Path(file_okay=False, path_type=str),
              help="A model directory to draw (repeatable). Default: every one in the database.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="A metric to draw, one panel each (repeatable). Default: accuracy and loss.")
@click.option("--dataset", metavar="NAME", help="The validation set. Default: each run's first.")
@click.option("--best-by", metavar="NAME", help="The metric the best point (★) is chosen by. Default: the first metric.")
@click.option("-o", "--out", default="evaluations.png", show_default=True, type=click.Path(dir_okay=False),
              help="The picture to write: .png or .svg.")
@db_option
def plot(model_dirs: tuple[str, ...], metrics: tuple[str, ...], dataset: str | None, best_by: str | None,
         out: str, db_url: str | None) -> int:
    """Draw the metrics by step of one or several model directories, the best point marked.

    Needs matplotlib: pip install 'evaluator[plot]'.

    \b
    Examples:
      evaluator plot -o runs.png
      evaluator plot --model-dir runs/a --model-dir runs/b --metric accuracy --metric top_k_accuracy:5 -o ab.svg
    """
    from evaluator import plot as plot_module
    from evaluator.evaluation import History
    from evaluator.store import Store, resolve_url

    chosen = list(dict.fromkeys(metrics)) or ["accuracy", "loss"]
    directories = [normalize_model_dir(d) for d in model_dirs] or [None]
    rows: list[Any] = []
    best: dict[Any, Any] = {}
    with Store.open(resolve_url(db_url), create=False) as store:
        for directory in directories:
            history = store.history(directory, last=MAX_LAST, best_by=best_by or chosen[0], dataset=dataset)
            rows += list(history.rows)
            best.update(history.best)
    if not rows:
        where = f" for {', '.join(model_dirs)}" if model_dirs else ""
        click.echo(f"evaluator: no evaluations recorded{where} in {store.url}", err=True)
        return EXIT_NO_ROWS
    drawn = plot_module.draw(History(rows=rows, best=best, best_by=best_by or chosen[0], dataset=dataset),
                             chosen, dataset, out)
    click.echo(f"wrote {out}: {drawn} line(s) of {', '.join(chosen)}")
    return 0
