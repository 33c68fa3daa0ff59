"""`evaluator report`: the evaluation history as a table (rich), JSON or CSV. No TensorFlow here."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from evaluator.evaluation import DEFAULT_NAME, Evaluation, History, Status

if TYPE_CHECKING:  # pragma: no cover - rich is imported when a table is drawn (JSON and CSV don't need it)
    from rich.table import Table

FORMATS = ("table", "json", "csv")
#: The fields of each JSON object / CSV column, in order.
FIELDS = (
    "model_dir", "name", "checkpoint", "fingerprint", "step", "status", "accuracy", "loss", "examples", "ema",
    "ema_source", "best", "restore_seconds", "eval_seconds", "device", "detected_at", "started_at", "evaluated_at", "error",
)
_NOTE_WIDTH = 70


def records(history: History) -> Iterator[dict[str, Any]]:
    """One plain dict per row (ISO 8601 UTC times), the shape of the JSON and CSV outputs, as the
    rows come (a report of any size in constant memory)."""
    return (_record(row, history.is_best(row)) for row in history.rows)


def render(history: History, fmt: str, out: IO[str]) -> None:
    """Write `history` to `out` as `fmt` (one of FORMATS)."""
    if fmt == "json":
        _json_array(records(history), out)
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records(history))
    elif fmt == "table":
        _tables(history, out)
    else:
        raise ValueError(f"unknown format {fmt!r}")


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
    for name in ("detected_at", "started_at", "evaluated_at"):
        when = values[name]
        values[name] = when.isoformat() if isinstance(when, datetime) else None
    return values


def _tables(history: History, out: IO[str]) -> None:
    from rich.console import Console

    console = Console(file=out, width=None if out.isatty() else 160, highlight=False)
    for model_dir, name in dict.fromkeys((row.model_dir, row.name) for row in history.rows):
        rows = [row for row in history.rows if (row.model_dir, row.name) == (model_dir, name)]
        console.print(_table(model_dir, name, rows, history))
        console.print()


def _table(model_dir: str, name: str, rows: list[Evaluation], history: History) -> Table:
    from rich import box
    from rich.table import Table

    best = history.best.get((model_dir, name))
    caption = (f"★ best: step {best.step}, accuracy {best.accuracy:.4f} ({best.checkpoint})"
               if best is not None and best.accuracy is not None else "no successful evaluation yet")
    title = model_dir if name == DEFAULT_NAME else f"{model_dir} ({name})"
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left",
                  caption_justify="left")
    for name, justify in (("step", "right"), ("accuracy", "right"), ("loss", "right"),
                          ("examples", "right"), ("ema", "center"), ("status", "left"),
                          ("checkpoint", "left"), ("evaluated", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    notes = any(row.error for row in rows)
    if notes:
        table.add_column("note", overflow="ellipsis", max_width=_NOTE_WIDTH, no_wrap=True)
    for row in rows:
        cells = [
            _text(row.step),
            (f"{row.accuracy:.4f}" if row.accuracy is not None else "") + (" ★" if history.is_best(row) else ""),
            f"{row.loss:.4f}" if row.loss is not None else "",
            _text(row.examples),
            row.ema_source or "",
            _status(row.status),
            row.checkpoint,
            row.evaluated_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
        ]
        if notes:
            cells.append(row.error or "")
        table.add_row(*cells)
    return table


def _status(status: Status) -> str:
    colour = {Status.OK: "green", Status.MISSING: "yellow", Status.FAILED: "red"}[status]
    return f"[{colour}]{status.value}[/{colour}]"


def _text(value: object) -> str:
    return "" if value is None else str(value)
