"""The command line: `evaluator watch`, `report`, `retry`, `db upgrade|current`.

Commands parse options and call the service or the store; `main` is the one place that turns the
project's errors (and click's usage errors) into one line on stderr and an exit code. TensorFlow
is imported only by `watch`, when it builds the evaluation model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import click

from evaluator import __version__
from evaluator.checkpoints import EMA_NAME, normalize_model_dir
from evaluator.errors import EXIT_CONFIG, EXIT_NO_ROWS, EXIT_UPGRADE_NEEDED, EvaluatorError
from evaluator.evaluation import DEFAULT_NAME, Status
from evaluator.options import (
    DB_ENV,
    DEVICES,
    LOG_FORMATS,
    LOG_LEVELS,
    METRIC_NAMES,
    ORDERS,
    WatchOptions,
    is_metric_name,
)
from evaluator.report import FORMATS as REPORT_FORMATS

EXPORT_FORMATS = ("savedmodel", "frozen")

# SQLAlchemy, structlog, rich and TensorFlow are imported inside the commands that use them:
# `evaluator --help` and `evaluator report` stay fast.

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Exit status after Ctrl-C outside the daemon's own signal handling (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: The most rows `report --last` asks for per evaluation; a table shows at most TABLE_ROWS of them.
MAX_LAST = 1_000_000_000
TABLE_ROWS = 1000


def _check_metrics(ctx: click.Context, param: click.Parameter, names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [name for name in names if not is_metric_name(name)]
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r} is not a built-in metric; they are {', '.join(METRIC_NAMES)} "
                                 "(K, C: whole numbers, e.g. top_k_accuracy:5, recall:3)")
    return names


class Duration(click.ParamType):
    """Seconds, or a number with s, m or h."""

    name = "duration"
    _UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        unit = text[-1] if text and text[-1] in "smh" else ""
        try:
            seconds = float(text[: len(text) - len(unit)]) * self._UNITS[unit]
        except ValueError:
            self.fail(f"{value!r} is not a duration (e.g. 90, 90s, 15m, 2h)", param, ctx)
        if not seconds > 0 or seconds == float("inf"):
            self.fail(f"{value!r}: a duration is a positive number of seconds, minutes (m) or hours (h)", param, ctx)
        return seconds


def name_option(command: F) -> F:
    return click.option(
        "--name", default=DEFAULT_NAME, show_default=True, metavar="NAME",
        help="The evaluation's name: part of every row's key, so several evaluations of one model "
             "directory (another task, --no-ema) live side by side in one database.",
    )(command)


def db_option(command: F) -> F:
    return click.option(
        "--db", "db_url", envvar=DB_ENV, show_envvar=True, metavar="URL",
        help="SQLAlchemy database URL. Default: SQLite at $XDG_STATE_HOME/evaluator/evaluations.db "
             "(~/.local/state/evaluator/evaluations.db).",
    )(command)


def log_options(command: F) -> F:
    command = click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info",
                           show_default=True, help="Least severe events to log.")(command)
    return click.option("--log-format", type=click.Choice(LOG_FORMATS), default="auto",
                        show_default=True,
                        help="auto: console on a terminal, JSON lines otherwise (journald, files).")(command)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="evaluator")
def cli() -> None:
    """Continuous evaluation for TensorFlow training jobs.

    `watch` evaluates every checkpoint a training job writes, with its EMA weights, and
    records one row per checkpoint; `report` shows the history.

    \b
      evaluator watch ./model_dir --task examples/digits/task.py:TASK
      evaluator report --last 10
    """


@cli.command()
@click.argument("model_dirs", nargs=-1, type=click.Path(file_okay=False, path_type=str))
@click.option("--task", "task_spec", required=True, envvar="EVALUATOR_TASK", show_envvar=True,
              metavar="SPEC",
              help="The model and validation data: package.module:NAME or path/to/file.py:NAME, an "
                   "object with validation_data() and either model() (TF2: a Keras 3 model or tf.Module) "
                   "or inference(features) -> logits (tf.compat.v1 graph code).")
@db_option
@click.option("--once", is_flag=True, help="Evaluate what is pending, then exit (cron, CI).")
@name_option
@click.option("--poll", is_flag=True,
              help="Poll the directory instead of using inotify events (NFS and other network file "
                   "systems). A checkpoint that training writes and deletes (max_to_keep) within one "
                   "poll interval is never seen, and gets no row: prefer events where they work.")
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              metavar="SECONDS", help="With --poll: how often to scan the directory.")
@click.option("--rescan", "rescan_interval", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, metavar="SECONDS",
              help="Re-read the state file this often even without events (a missed event only delays).")
@click.option("--wait-for-dir", is_flag=True,
              help="If MODEL_DIR does not exist yet, wait for it instead of failing.")
@click.option("--ema/--no-ema", default=True, show_default=True,
              help="Restore the exponential-moving-average shadow weights (--no-ema: the raw weights).")
@click.option("--ema-name", default=EMA_NAME, show_default=True,
              help="Name of the tf.train.ExponentialMovingAverage the trainer used (averages named "
                   "<var>/<name>); Keras use_ema averages are found without it.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where to evaluate; auto takes the GPU when TensorFlow sees one (memory growth on).")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="Batch size for numpy validation data. Default: the task's batch_size, else 1024.")
@click.option("--stop-grace", type=click.FloatRange(min=0), default=20.0, show_default=True,
              metavar="SECONDS",
              help="On SIGTERM/SIGINT/SIGHUP, let the evaluation in progress finish if it can within "
                   "this time; else it is abandoned (no row) and runs again at the next start.")
@click.option("--missing-grace", type=click.FloatRange(min=0), default=60.0, show_default=True,
              metavar="SECONDS",
              help="A listed checkpoint that never appears on disk is recorded `missing` after this "
                   "long, once a newer checkpoint is there (a copy may still be bringing it).")
@click.option("--retries", type=click.IntRange(min=1, max=1000), default=5, show_default=True, metavar="N",
              help="Failures that are not a checkpoint's own (validation data, task code, the machine) "
                   "are retried with backoff (1, 2, 4... s); after N in a row, exit 75 to be restarted.")
@click.option("--lease", type=click.FloatRange(min=1), default=90.0, show_default=True, metavar="SECONDS",
              help="A checkpoint being evaluated is claimed in the database; a claim whose evaluator "
                   "died is taken over after this long (a live one renews it every lease/3).")
@click.option("--db-wait", type=click.FloatRange(min=0), default=60.0, show_default=True, metavar="SECONDS",
              help="At start, wait this long for a locked or unreachable database, then exit 75.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME", callback=_check_metrics,
              help="A built-in metric to compute besides accuracy and loss (repeatable): "
                   f"{', '.join(METRIC_NAMES)}. A task can define its own (its `metrics`).")
@click.option("--summaries/--no-summaries", default=True, show_default=True,
              help="Write each checkpoint's metrics as TensorBoard scalars at its step.")
@click.option("--summary-dir", type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              envvar="EVALUATOR_SUMMARY_DIR", show_envvar=True,
              help="Where the event files go. Default: MODEL_DIR/eval (MODEL_DIR/eval_NAME with --name), "
                   "so `tensorboard --logdir MODEL_DIR` shows training and evaluation together.")
@click.option("--best-metric", metavar="NAME",
              help="The metric the best checkpoints are chosen by, in its direction (SET/NAME for another "
                   "validation set than the first). Default: accuracy, else (a regression) loss.")
@click.option("--keep-best", type=click.IntRange(min=0), default=1, show_default=True, metavar="N",
              help="Keep the N best checkpoints where training's max_to_keep cannot delete them (0: keep none).")
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              envvar="EVALUATOR_EXPORT_DIR", show_envvar=True,
              help="Where the best checkpoints are kept. Default: MODEL_DIR/export/best (best_NAME with --name).")
@click.option("--export", "exports", multiple=True, type=click.Choice(EXPORT_FORMATS),
              help="Also write each kept checkpoint as a SavedModel (EXPORT_DIR/savedmodel/STEP, signature "
                   "serving_default: features -> logits) or, for graph tasks, a frozen GraphDef "
                   "(EXPORT_DIR/frozen/STEP.pb), with the weights evaluated (the averages). Repeatable.")
@click.option("--until-step", type=click.IntRange(min=0), metavar="N",
              help="Stop (exit 0) after evaluating a checkpoint at step N or later.")
@click.option("--idle-timeout", type=Duration(), metavar="DURATION",
              help="Stop (exit 0) after nothing new for this long: 90, 90s, 15m, 2h.")
@click.option("--done-file", metavar="NAME",
              help="When training writes MODEL_DIR/NAME, evaluate what is pending and stop (exit 0).")
@click.option("--root", "roots", multiple=True, type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              help="Serve every directory below DIR (to --depth) that holds a `checkpoint` state file (or Keras "
                   "weight files), found as runs appear, forgotten when they disappear. Repeatable.")
@click.option("--depth", type=click.IntRange(min=0, max=20), default=3, show_default=True, metavar="N",
              help="With --root: how many directory levels below it to look for runs.")
@click.option("--order", type=click.Choice(ORDERS), default="oldest", show_default=True,
              help="Which pending checkpoint of a run first: every one oldest step first, or the newest first "
                   "(behind a fast trainer, the latest numbers now and the older ones after).")
@log_options
def watch(model_dirs: tuple[str, ...], roots: tuple[str, ...], depth: int, order: str, task_spec: str, db_url: str | None, once: bool, name: str, poll: bool,
          poll_interval: float, rescan_interval: float, wait_for_dir: bool, ema: bool, ema_name: str,
          device: str, batch_size: int | None, stop_grace: float, missing_grace: float, retries: int,
          lease: float, db_wait: float, metrics: tuple[str, ...], summaries: bool, summary_dir: str | None,
          best_metric: str | None, keep_best: int, export_dir: str | None, exports: tuple[str, ...],
          until_step: int | None, idle_timeout: float | None, done_file: str | None, log_format: str,
          log_level: str) -> int:
    """Evaluate every checkpoint in MODEL_DIR (one or several, or every run below --root), then
    each new one as training writes it.

    Each checkpoint listed in MODEL_DIR/checkpoint (or on disk beside those listed, and, for a
    TF2 task, each *.weights.h5 / *.keras file) is restored into the model built once from
    --task, with the exponential moving averages the trainer kept (Keras use_ema,
    tf.train.ExponentialMovingAverage; --no-ema for raw weights), run over every validation set
    the task gives, and recorded as one row: step, metrics (accuracy and loss by default, the
    task's own and --metric's), examples, timings and status (ok; missing: deleted before it
    could be read; failed: with the error). A restart resumes where the rows end. Stops on
    Ctrl-C, SIGTERM or SIGHUP; logs go to stderr.

    A task may define `metrics` (a list of built-in names, or a mapping from a name to a
    built-in name, a function (labels, outputs) -> per-example values, a keras.metrics.Metric,
    or a (metric, "max"|"min") pair) and return several validation sets from
    validation_data() as a mapping from a name to a set; see the README.

    Exit status: 0 stopped (or --once done); 2 configuration error (fix it); 3 --once left
    something unevaluated (failed rows, unreadable state file, listed files absent); 75 the
    database or the task's environment failed for now (restart it); 1 a bug.

    \b
    Examples:
      evaluator watch ./model_dir --task examples/digits/task.py:TASK
      evaluator watch /nfs/job1 --task mypkg.eval:TASK --poll --db sqlite:////srv/evals.db
      evaluator watch ./model_dir --task mypkg.eval:TASK --once    # evaluate what is there, exit
    """
    from evaluator import log
    from evaluator.service import Service
    from evaluator.store import resolve_url

    log.configure(log_format, log_level)

    model_dirs = tuple(d for d in model_dirs if d)  # systemd's empty $MODEL_DIR of a --root instance
    if not model_dirs and not roots:
        raise click.UsageError("give a MODEL_DIR (or several), or --root DIR")
    options = WatchOptions(
        model_dir=model_dirs[0] if model_dirs else "", model_dirs=tuple(model_dirs[1:]), roots=tuple(roots),
        depth=depth, order=order, task=task_spec, db_url=resolve_url(db_url), once=once, poll=poll,
        poll_interval=poll_interval, rescan_interval=rescan_interval, wait_for_dir=wait_for_dir,
        ema=ema, ema_name=ema_name, device=device, batch_size=batch_size, stop_grace=stop_grace,
        name=name, missing_grace=missing_grace, retries=retries, lease=lease, db_wait=db_wait,
        metrics=tuple(dict.fromkeys(metrics)), summaries=summaries, summary_dir=summary_dir,
        best_metric=best_metric, keep_best=keep_best, export_dir=export_dir, export=tuple(dict.fromkeys(exports)),
        until_step=until_step, idle_timeout=idle_timeout, done_file=done_file,
    )
    return Service(options).run(own_process=True)


@cli.command()
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


@cli.command()
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
    from datetime import datetime, timezone

    from evaluator.store import Store, resolve_url

    with Store.open(resolve_url(db_url), create=False) as store:
        found = store.workers()
    now = datetime.now(timezone.utc)
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


@cli.command()
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


@cli.command()
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


@cli.group()
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


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the command, and turn errors into one line on stderr and an exit code."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="evaluator",
                        standalone_mode=False)
    except click.UsageError as err:
        where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        _fail(err.format_message() + where, err.exit_code)
    except click.ClickException as err:
        _fail(err.format_message(), err.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", EXIT_INTERRUPTED)
    except EvaluatorError as err:
        _fail(str(err), err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    """One line on stderr: `evaluator: error: ...`, or with JSON logs an `error` event."""
    text = " ".join(message.split())
    if "evaluator.log" in sys.modules and sys.modules["evaluator.log"].json_active():
        sys.modules["evaluator.log"].get().error("error", error=text, exit_code=code or EXIT_CONFIG)
    else:
        click.echo(f"evaluator: error: {text}", err=True)
    sys.exit(code or EXIT_CONFIG)
