"""What several commands share: the --db, --name and log options, the Duration type, the
--metric check, and the CLI's constants. No TensorFlow, SQLAlchemy or rich here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from evaluator.evaluation import DEFAULT_NAME
from evaluator.options import DB_ENV, LOG_FORMATS, LOG_LEVELS, METRIC_NAMES, is_metric_name

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Exit status after Ctrl-C outside the daemon's own signal handling (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: The most rows `report --last` asks for per evaluation; a table shows at most TABLE_ROWS of them.
MAX_LAST = 1_000_000_000
TABLE_ROWS = 1000
EXPORT_FORMATS = ("savedmodel", "frozen")


def check_metrics(ctx: click.Context, param: click.Parameter, names: tuple[str, ...]) -> tuple[str, ...]:
    """A --metric callback: every name is a built-in metric."""
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


class Size(click.ParamType):
    """Bytes, or a number with K, M, G or T (powers of 1024), or a percentage of the free space."""

    name = "size"
    _UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str | int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text.endswith("%"):
            try:
                share = float(text[:-1])
            except ValueError:
                share = -1.0
            if not 0 <= share <= 100:
                self.fail(f"{value!r}: a share of the free space is 0% to 100%", param, ctx)
            return text
        unit = text[-1] if text and text[-1] in "bkmgt" else ""
        try:
            size = float(text[: len(text) - len(unit)]) * self._UNITS[unit]
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 0, 500M, 20G, 10%)", param, ctx)
        if not 0 <= size < float("inf"):
            self.fail(f"{value!r}: a size is 0 or more bytes", param, ctx)
        return int(size)


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
