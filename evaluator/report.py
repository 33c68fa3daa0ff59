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
    """One table per (model directory, name). On a terminal, as wide as the terminal: a number is
    never cut; columns that do not fit are left out (the caption names them) and the note wraps.
    Piped, every column at its full width and no padding past the last one."""
    from rich.console import Console

    terminal = out.isatty()
    console = Console(file=out, highlight=False) if terminal else None
    rows = list(history.rows)
    for model_dir, name in dict.fromkeys((row.model_dir, row.name) for row in rows):
        group = [row for row in rows if (row.model_dir, row.name) == (model_dir, name)]
        shown, hidden = columns or _default_columns(group, history.dataset), 0
        if history.best_by and history.best_by not in shown:
            shown = (*shown, history.best_by)  # the best is marked in the column it was chosen by
        if not columns:
            hidden = len(_metric_names(group, history.dataset)) - len(shown)
        table = _Table(model_dir, name, group, history, shown, hidden)
        if console is not None:
            console.print(table.fitted(console.width))
            console.print()
        else:
            _plain(table.fitted(None), out)


def _plain(table: Any, out: IO[str]) -> None:
    """A table as text at its natural width, lines without trailing blanks (for pipes and files)."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=_width(table), highlight=False, color_system=None).print(table)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()) + "\n")


#: Columns left out, in this order, while a table is wider than the terminal; then metrics, the
#: last first (step, status, the first metric and the one the best is marked in always stay).
_LEAVE_OUT = ("evaluated", "ema", "note", "checkpoint", "examples")
#: The narrowest a wrapped note may be.
_MIN_NOTE = 20


class _Table:
    """The cells of one table, and how to lay them out within a width."""

    def __init__(self, model_dir: str, name: str, rows: list[Evaluation], history: History,
                 columns: tuple[str, ...], hidden: int = 0) -> None:
        best = history.best.get((model_dir, name))
        by = history.best_by or ("accuracy" if best is None or best.accuracy is not None else "loss")
        best_value = None if best is None else best.value(by, history.dataset)
        self.caption = (f"★ best {by}: {best_value:.4f}, step {best.step} ({best.checkpoint})"
                        if best is not None and best_value is not None else "no successful evaluation yet")
        if hidden > 0:
            self.caption += f"; {hidden} more metric(s) not shown: --metric NAME, or --format json"
        self.title = model_dir if name == DEFAULT_NAME else f"{model_dir} ({name})"
        sets = [list(row.metrics) for row in rows if row.metrics]
        shown = history.dataset or (sets[-1][0] if sets and len(sets[-1]) > 1 else None)
        if shown:
            self.title += f" — validation set {shown}"
        self.star_column = star_column = by if by in columns else columns[0]
        #: (header, justify, cells) in order; metrics are the columns after "step" up to "examples".
        self.columns: list[tuple[str, str, list[str]]] = [("step", "right", [_text(row.step) for row in rows])]
        for column in columns:
            cells = []
            for row in rows:
                value = row.value(column, history.dataset)
                cells.append(("" if value is None else f"{value:.4f}")
                             + (" ★" if column == star_column and history.is_best(row) else ""))
            self.columns.append((column, "right", cells))
        examples = [row.value(EXAMPLES, history.dataset) for row in rows]
        self.columns += [
            ("examples", "right", [_text(int(e) if e is not None else None) for e in examples]),
            ("ema", "center", [row.ema_source or "" for row in rows]),
            ("status", "left", [_status(row.status) for row in rows]),
            ("checkpoint", "left", [row.checkpoint for row in rows]),
            ("evaluated", "left", [row.evaluated_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") for row in rows]),
        ]
        self.notes = [row.error or "" for row in rows] if any(row.error for row in rows) else None
        self.rows = len(rows)

    def fitted(self, width: int | None) -> Table:
        """The table within `width` columns (None: unbounded): numbers whole, the note wrapped,
        columns left out (named in the caption) while it does not fit."""
        keep = [header for header, _, _ in self.columns] + (["note"] if self.notes else [])
        if width is None:
            return self._build(keep, [], note_width=None)
        left_out: list[str] = []
        while True:
            natural = _width(self._build([c for c in keep if c != "note"], left_out, note_width=None))
            note = width - natural - 3 if "note" in keep else 0
            if natural <= width and (note >= _MIN_NOTE or "note" not in keep):
                return self._build(keep, left_out, note_width=note or None)
            metrics = [c for c in keep[2:] if c not in (*_LEAVE_OUT, "status", self.star_column)]
            candidates = [c for c in _LEAVE_OUT if c in keep] or metrics[-1:]
            if not candidates:  # as narrow as it gets: the terminal wraps it
                return self._build(keep, left_out, note_width=None)
            keep.remove(candidates[0])
            left_out.append(candidates[0])

    def _build(self, keep: list[str], left_out: list[str], *, note_width: int | None) -> Table:
        from rich import box
        from rich.table import Table

        caption = self.caption
        if left_out:
            caption += f"; not shown at this width: {', '.join(left_out)} (a wider terminal, or --format json)"
        table = Table(title=self.title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left",
                      caption_justify="left")
        columns = [c for c in self.columns if c[0] in keep]
        for header, justify, cells in columns:
            table.add_column(header, justify=justify, no_wrap=True,  # type: ignore[arg-type]
                             min_width=max([len(header), *(len(_bare(c)) for c in cells)]))
        notes = self.notes if "note" in keep else None
        if notes:
            table.add_column("note", overflow="fold", max_width=note_width)
        for index in range(self.rows):
            table.add_row(*(cells[index] for _, _, cells in columns), *([notes[index]] if notes else []))
        return table


def _width(table: Any) -> int:
    """The width `table` takes at most, measured without a terminal's limit."""
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=100_000).measure(table).maximum


def _bare(cell: str) -> str:
    """A cell's text without rich's markup ([green]ok[/green] -> ok)."""
    import re

    return re.sub(r"\[/?[a-z ]+\]", "", cell)


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


def _status(status: Status) -> str:
    colour = {Status.OK: "green", Status.MISSING: "yellow", Status.FAILED: "red"}[status]
    return f"[{colour}]{status.value}[/{colour}]"


def _text(value: object) -> str:
    return "" if value is None else str(value)
