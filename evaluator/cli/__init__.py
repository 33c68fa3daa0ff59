"""The command line: `evaluator watch`, `report`, `plot`, `workers`, `retry`, `db upgrade|current`.

One module per command group (watching: watch; history: report and plot; pool: workers; rows:
retry; database: db), their shared options in `options`. Commands parse options and call the
service or the store; `main` here is the one place that turns the project's errors (and click's
usage errors) into one line on stderr and an exit code. TensorFlow is imported only by `watch`,
when it builds the evaluation model; SQLAlchemy, structlog and rich only inside the commands that
use them, so `evaluator --help` and `evaluator report` stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from evaluator import __version__
from evaluator.cli.database import db
from evaluator.cli.history import plot, report
from evaluator.cli.options import CONTEXT, EXIT_INTERRUPTED
from evaluator.cli.pool import workers
from evaluator.cli.rows import retry
from evaluator.cli.watching import watch
from evaluator.errors import EXIT_CONFIG, EvaluatorError

__all__ = ["cli", "main", "watch", "report", "plot", "workers", "retry", "db"]


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


for _command in (watch, report, workers, plot, retry, db):
    cli.add_command(_command)


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
