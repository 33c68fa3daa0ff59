"""`evaluator plot`: the metrics by step of one or several model directories, as a PNG or SVG, the
best row of each marked. matplotlib is an optional extra (`pip install 'evaluator[plot]'`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from evaluator.errors import ConfigError
from evaluator.evaluation import DEFAULT_NAME, History, Status

FORMATS = (".png", ".svg")


@dataclass(frozen=True)
class Series:
    """One evaluation's values of one metric, by step."""

    label: str
    steps: list[int]
    values: list[float]
    best: tuple[int, float] | None


def series(history: History, metric: str, dataset: str | None) -> list[Series]:
    """Per (model directory, name): the ok rows' values of `metric`, and the best row's point."""
    rows = list(history.rows)
    found = []
    for model_dir, name in dict.fromkeys((r.model_dir, r.name) for r in rows):
        points = [(r.step, r.value(metric, dataset)) for r in rows
                  if (r.model_dir, r.name) == (model_dir, name) and r.status is Status.OK and r.step is not None]
        points = [(step, value) for step, value in points if value is not None]
        if not points:
            continue
        best_row = history.best.get((model_dir, name))
        best_value = best_row.value(metric, dataset) if best_row is not None else None
        best = (best_row.step, best_value) if best_row is not None and best_value is not None and \
            best_row.step is not None else None
        label = _label(model_dir, name, [r.model_dir for r in rows])
        found.append(Series(label, [p[0] for p in points], [p[1] for p in points], best))  # type: ignore[misc]
    return found


def draw(history: History, metrics: list[str], dataset: str | None, path: str) -> int:
    """Write one panel per metric to `path` (.png or .svg); returns how many series were drawn."""
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise ConfigError(f"--out {path}: write a .png or a .svg file")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'evaluator[plot]'") from None
    history = History(rows=list(history.rows), best=history.best, best_by=history.best_by, dataset=history.dataset)
    panels = [(metric, series(history, metric, dataset)) for metric in metrics]
    drawn = sum(len(lines) for _, lines in panels)
    if not drawn:
        raise ConfigError(f"nothing to plot: no ok rows have {', '.join(metrics)}"
                          + (f" on the validation set {dataset!r}" if dataset else ""))
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), sharex=True, squeeze=False)
    for axis, (metric, lines) in zip(axes[:, 0], panels):
        for line in lines:
            (drawn_line,) = axis.plot(line.steps, line.values, marker="o", markersize=3, label=line.label)
            if line.best is not None and metric == (history.best_by or metric):
                axis.plot(*line.best, marker="*", markersize=16, color=drawn_line.get_color(),
                          markeredgecolor="black", linestyle="none")
                axis.annotate(f"best {line.best[1]:.4g} @ {line.best[0]}", line.best, textcoords="offset points",
                              xytext=(6, 8), fontsize=8)
        axis.set_ylabel(metric + (f" ({dataset})" if dataset else ""))
        axis.grid(True, alpha=0.3)
        axis.margins(y=0.15)  # room for the best point's label
        if lines:
            axis.legend(fontsize=8, loc="best")
        else:
            axis.text(0.5, 0.5, f"no values of {metric}", transform=axis.transAxes, ha="center", color="gray")
    axes[-1, 0].set_xlabel("step")
    best_by = history.best_by or metrics[0]
    figure.suptitle(f"evaluations by step (★ best {best_by})", fontsize=11)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return drawn


def _label(model_dir: str, name: str, all_dirs: list[str]) -> str:
    """The shortest readable name: the directory's last parts that tell it apart from the others."""
    parts = model_dir.rstrip(os.sep).split(os.sep)
    others = {d for d in all_dirs if d != model_dir}
    for depth in range(1, len(parts) + 1):
        tail = os.sep.join(parts[-depth:])
        if not any(o.endswith(tail) for o in others):
            break
    label = tail if len(parts) > 1 else model_dir
    return label if name == DEFAULT_NAME else f"{label} ({name})"


