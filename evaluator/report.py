"""`evaluator report`: the evaluation history as a table (rich), JSON or CSV. No TensorFlow here."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from evaluator.evaluation import DEFAULT_NAME, EXAMPLES, Evaluation, History, Status

if TYPE_CHECKING:  # pragma: no cover - rich is imported when a table is drawn (JSON and CSV don't need it)
    from rich.table import Table

FORMATS = ("table", "json", "csv")
#: The fields of each JSON object / CSV column, in order.
FIELDS = (
    "model_dir", "name", "checkpoint", "fingerprint", "step", "status", "accuracy", "loss", "examples", "ema",
    "ema_source", "best", "restore_seconds", "eval_seconds", "device", "detected_at", "started_at", "evaluated_at", "error",
)
#: JSON's fields: the same, and every metric of every set ({set: {metric: value, "examples": n}}).
JSON_FIELDS = (*FIELDS, "metrics")
_NOTE_WIDTH = 70
#: Metric columns a table shows at most when --metric does not choose them.
_TABLE_METRICS = 6


def records(history: History, columns: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """One plain dict per row (ISO 8601 UTC times, floats to 7 significant digits), the shape of the
    JSON and CSV outputs, as the rows come (a report of any size in constant memory); `columns`:
    metrics added as fields."""
    for row in history.rows:
        record = _record(row, history.is_best(row))
        if history.dataset is not None:  # the fields of today's report, for the set asked for
            record.update({name: row.value(name, history.dataset) for name in ("accuracy", "loss", EXAMPLES)})
            record["dataset"] = history.dataset
        record.update({name: row.value(name, history.dataset) for name in columns})
        yield _short(record)


def _short(value: Any) -> Any:
    """Floats without float noise (0.8944444444444445 -> 0.8944444): 7 significant digits is far
    below any metric's sampling error, and timings are noisier still."""
    if isinstance(value, float):
        return float(f"{value:.7g}")
    if isinstance(value, dict):
        return {key: _short(item) for key, item in value.items()}
    return value


def render(history: History, fmt: str, out: IO[str], columns: tuple[str, ...] = ()) -> None:
    """Write `history` to `out` as `fmt` (one of FORMATS); `columns` are the metrics to show
    (--metric; a table's default: the first set's, JSON: always every one)."""
    if fmt == "json":
        _json_array(records(history, columns), out)
    elif fmt == "csv":
        names = [*FIELDS, *(["dataset"] if history.dataset else []), *(name for name in columns if name not in FIELDS)]
        writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: _csv(value) for key, value in record.items()} for record in records(history, columns))
    elif fmt == "table":
        _tables(history, out, columns)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def _csv(value: Any) -> Any:
    """Booleans as JSON and most tools spell them."""
    return ("true" if value else "false") if isinstance(value, bool) else value


def _json_array(items: Iterator[dict[str, Any]], out: IO[str]) -> None:
    """A JSON array written item by item, laid out like json.dump(..., indent=2)."""
    separator = "["
    for item in items:
        out.write(separator + "\n  " + json.dumps(item, indent=2).replace("\n", "\n  "))
        separator = ","
    out.write("[]\n" if separator == "[" else "\n]\n")


def _record(row: Evaluation, best: bool) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(row, name, None) for name in FIELDS}
    values["status"] = row.status.value
    values["best"] = best
    values["metrics"] = row.metrics or {}
    for name in ("detected_at", "started_at", "evaluated_at"):
        when = values[name]
        values[name] = when.isoformat() if isinstance(when, datetime) else None
    return values


def _tables(history: History, out: IO[str], columns: tuple[str, ...]) -> None:
    from rich.console import Console

    console = Console(file=out, width=None if out.isatty() else 160, highlight=False)
    rows = list(history.rows)
    for model_dir, name in dict.fromkeys((row.model_dir, row.name) for row in rows):
        group = [row for row in rows if (row.model_dir, row.name) == (model_dir, name)]
        shown, hidden = columns or _default_columns(group, history.dataset), 0
        if history.best_by and history.best_by not in shown:
            shown = (*shown, history.best_by)  # the best is marked in the column it was chosen by
        if not columns:
            hidden = len(_metric_names(group, history.dataset)) - len(shown)
        console.print(_table(model_dir, name, group, history, shown, hidden))
        console.print()


def _metric_names(rows: list[Evaluation], dataset: str | None) -> list[str]:
    """The metrics the rows have on the set shown, accuracy and loss first."""
    names: dict[str, None] = {}
    for row in rows:
        values = (row.metrics or {}).get(dataset) if dataset else next(iter((row.metrics or {}).values()), None)
        names.update(dict.fromkeys(values or {}))
    names.pop(EXAMPLES, None)
    return [n for n in ("accuracy", "loss") if n in names] + [n for n in names if n not in ("accuracy", "loss")]


def _default_columns(rows: list[Evaluation], dataset: str | None) -> tuple[str, ...]:
    """The first _TABLE_METRICS of the set's metrics."""
    return tuple(_metric_names(rows, dataset)[:_TABLE_METRICS]) or ("accuracy", "loss")


def _table(model_dir: str, name: str, rows: list[Evaluation], history: History, columns: tuple[str, ...],
           hidden: int = 0) -> Table:
    from rich import box
    from rich.table import Table

    best = history.best.get((model_dir, name))
    by = history.best_by or ("accuracy" if best is None or best.accuracy is not None else "loss")
    best_value = None if best is None else best.value(by, history.dataset)
    caption = (f"★ best {by}: {best_value:.4f}, step {best.step} ({best.checkpoint})"
               if best is not None and best_value is not None else "no successful evaluation yet")
    if hidden > 0:
        caption += f"; {hidden} more metric(s) not shown: --metric NAME, or --format json"
    title = model_dir if name == DEFAULT_NAME else f"{model_dir} ({name})"
    sets = [list(row.metrics) for row in rows if row.metrics]
    shown = history.dataset or (sets[-1][0] if sets and len(sets[-1]) > 1 else None)
    if shown:
        title += f" — validation set {shown}"
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left",
                  caption_justify="left")
    table.add_column("step", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    for column, justify in (("examples", "right"), ("ema", "center"), ("status", "left"),
                            ("checkpoint", "left"), ("evaluated", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    notes = any(row.error for row in rows)
    if notes:
        table.add_column("note", overflow="ellipsis", max_width=_NOTE_WIDTH, no_wrap=True)
    star_column = by if by in columns else columns[0]
    for row in rows:
        cells = [_text(row.step)]
        for column in columns:
            value = row.value(column, history.dataset)
            cells.append(("" if value is None else f"{value:.4f}")
                         + (" ★" if column == star_column and history.is_best(row) else ""))
        examples = row.value(EXAMPLES, history.dataset)
        cells += [_text(int(examples) if examples is not None else None), row.ema_source or "", _status(row.status),
                  row.checkpoint, row.evaluated_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")]
        if notes:
            cells.append(row.error or "")
        table.add_row(*cells)
    return table


def _status(status: Status) -> str:
    colour = {Status.OK: "green", Status.MISSING: "yellow", Status.FAILED: "red"}[status]
    return f"[{colour}]{status.value}[/{colour}]"


def _text(value: object) -> str:
    return "" if value is None else str(value)
