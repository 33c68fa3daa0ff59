"""The command line: `evaluator watch`, `evaluator report`, `evaluator db upgrade|current`.

Commands parse options and call the service or the store; `main` is the one place that turns the
project's errors (and click's usage errors) into one line on stderr and an exit code. TensorFlow
is imported only by `watch`, when it builds the evaluation model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from evaluator import __version__
from evaluator.checkpoints import EMA_NAME, normalize_model_dir
from evaluator.errors import EXIT_CONFIG, EvaluatorError
from evaluator.options import DB_ENV, DEVICES, LOG_FORMATS, LOG_LEVELS, WatchOptions
from evaluator.report import FORMATS as REPORT_FORMATS

# SQLAlchemy, structlog, rich and TensorFlow are imported inside the commands that use them:
# `evaluator --help` and `evaluator report` stay fast.

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Exit status after Ctrl-C outside the daemon's own signal handling (128 + SIGINT).
EXIT_INTERRUPTED = 130


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
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--task", "task_spec", required=True, envvar="EVALUATOR_TASK", show_envvar=True,
              metavar="SPEC",
              help="The model and validation data: package.module:NAME or path/to/file.py:NAME, an "
                   "object with inference(features) -> logits and validation_data().")
@db_option
@click.option("--once", is_flag=True, help="Evaluate what is pending, then exit (cron, CI).")
@click.option("--poll", is_flag=True,
              help="Poll the directory instead of using inotify events (NFS and other network file systems).")
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
              help="Name of the ExponentialMovingAverage the trainer used (shadow = <var>/<name>).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where to evaluate; auto takes the GPU when TensorFlow sees one (memory growth on).")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="Batch size for numpy validation data. Default: the task's batch_size, else 1024.")
@click.option("--stop-grace", type=click.FloatRange(min=0), default=20.0, show_default=True,
              metavar="SECONDS",
              help="On SIGTERM/SIGINT, let the evaluation in progress finish if it can within this "
                   "time; else it is abandoned (no row) and runs again at the next start.")
@log_options
def watch(model_dir: str, task_spec: str, db_url: str | None, once: bool, poll: bool,
          poll_interval: float, rescan_interval: float, wait_for_dir: bool, ema: bool, ema_name: str,
          device: str, batch_size: int | None, stop_grace: float, log_format: str, log_level: str) -> int:
    """Evaluate every checkpoint in MODEL_DIR, then each new one as training writes it.

    Each checkpoint listed in MODEL_DIR/checkpoint is restored (EMA shadow weights by default)
    into a graph built once from --task, run over the validation set, and recorded as one row:
    step, accuracy, loss, examples, timings and status (ok, missing: deleted before it could be
    read, failed: with the error). A restart resumes where the rows end. Stops on Ctrl-C or
    SIGTERM; logs go to stderr.

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

    options = WatchOptions(
        model_dir=model_dir, task=task_spec, db_url=resolve_url(db_url), once=once, poll=poll,
        poll_interval=poll_interval, rescan_interval=rescan_interval, wait_for_dir=wait_for_dir,
        ema=ema, ema_name=ema_name, device=device, batch_size=batch_size, stop_grace=stop_grace,
    )
    return Service(options).run()


@cli.command()
@click.option("--last", type=click.IntRange(min=1), default=10, show_default=True, metavar="N",
              help="How many evaluations to show per model directory (the highest steps).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=str),
              help="Only this model directory. Default: every one in the database.")
@db_option
@click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="table",
              show_default=True, help="table for people; json and csv for scripts.")
def report(last: int, model_dir: str | None, db_url: str | None, fmt: str) -> int:
    """Show the most recent evaluations, by step, the best accuracy marked.

    JSON is a list of objects with model_dir, checkpoint, step, status, accuracy, loss,
    examples, ema, best, timings (restore_seconds, eval_seconds) and ISO 8601 UTC times
    (detected_at, started_at, evaluated_at).

    \b
    Examples:
      evaluator report --last 10
      evaluator report --model-dir ./model_dir --format json | jq '.[-1].accuracy'
    """
    from evaluator import report as report_module
    from evaluator.store import Store, describe, resolve_url

    with Store.open(resolve_url(db_url), create=False) as store:
        history = store.history(normalize_model_dir(model_dir) if model_dir else None, last)
    if not history.rows and fmt == "table":
        where = f" for {normalize_model_dir(model_dir)}" if model_dir else ""
        click.echo(f"no evaluations recorded{where} in {describe(resolve_url(db_url))}", err=True)
        return 0
    report_module.render(history, fmt, sys.stdout)
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

    Exits 1 when an upgrade is needed, so scripts can test it.
    """
    from evaluator.store import Store, describe, resolve_url

    url = resolve_url(db_url)
    with Store.open(url, create=False) as store:
        revision = store.revision()
    head = Store.head_revision()
    state = "up to date" if revision == head else f"needs `evaluator db upgrade` (newest is {head})"
    click.echo(f"{describe(url)}: revision {revision or 'none'}, {state}")
    return 0 if revision == head else 1


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
    text = " ".join(message.split())
    click.echo(f"evaluator: error: {text}", err=True)
    sys.exit(code or EXIT_CONFIG)
