"""Which actions a `watch` runs, from its options, checked against the evaluation model at start
(a best metric it does not compute, a frozen graph of a TF2 model: configuration errors)."""

from __future__ import annotations

import os
from typing import Any

from evaluator.actions import Action, Shared
from evaluator.errors import ConfigError
from evaluator.evaluation import DEFAULT_NAME
from evaluator.options import WatchOptions


def summary_dir(options: WatchOptions, model_dir: str, several: bool = False) -> str:
    """--summary-dir, else MODEL_DIR/eval (Estimator's convention; eval_<name> for a named evaluation;
    a remote MODEL_DIR: a local directory of its own).
    With several model directories, a given directory holds one subdirectory per run."""
    if options.summary_dir:
        return _per_run(os.path.abspath(options.summary_dir), model_dir, several)
    return os.path.join(_outputs(model_dir), "eval" if options.name == DEFAULT_NAME else f"eval_{options.name}")


def export_dir(options: WatchOptions, model_dir: str, several: bool = False) -> str:
    """--export-dir, else MODEL_DIR/export/best (best_<name> for a named evaluation; a remote
    MODEL_DIR: a local directory of its own)."""
    if options.export_dir:
        return _per_run(os.path.abspath(options.export_dir), model_dir, several)
    return os.path.join(_outputs(model_dir), "export", "best" if options.name == DEFAULT_NAME else f"best_{options.name}")


def _outputs(model_dir: str) -> str:
    """Where a run's outputs go by default: the model directory, or for one on object storage a
    local directory of its own (sources/remote.py: $XDG_DATA_HOME/evaluator/runs/<run>)."""
    from evaluator.sources import is_remote

    if not is_remote(model_dir):
        return model_dir
    from evaluator.sources.remote import outputs_dir

    return outputs_dir(model_dir)


def _per_run(directory: str, model_dir: str, several: bool) -> str:
    """One run's own place in a directory shared by several: its path, flattened (`/data/a/run1` ->
    `data_a_run1`), so two runs never share one."""
    return os.path.join(directory, model_dir.replace("://", "_").strip(os.sep).replace(os.sep, "_")) if several else directory


def check_actions(options: WatchOptions, model: Any, model_dirs: list[str], several: bool = False) -> None:
    """ConfigError for what the actions asked for cannot do with this model or these directories
    (before the database)."""
    if options.export and model.artifact is not None:
        raise ConfigError(f"--export does not apply to --{model.artifact}: the exported models are kept where "
                          "they are")
    if options.keep_best > 0 and model.artifact is None:  # exported models stay where they are
        for model_dir in model_dirs:
            check_export_dir(export_dir(options, model_dir, several), model_dir)
        check_best_metric(options.best_metric, model)
        if "frozen" in options.export and model.kind != "graph":
            raise ConfigError("--export frozen writes a frozen tf.compat.v1 GraphDef: it is for graph tasks "
                              "(inference()); a TF2 task exports --export savedmodel")


def build_actions(options: WatchOptions, model_dir: str, model: Any, log: Any, shared: Shared,
                  several: bool = False) -> list[Action]:
    """The actions of one model directory (ConfigError for an export directory that is the model
    directory itself: what leaves the best is removed from it)."""
    actions: list[Action] = []
    if options.summaries:
        from evaluator.actions.summaries import Summaries

        actions.append(Summaries(summary_dir(options, model_dir, several), log, shared, model_dir))
    if options.keep_best > 0 and model.artifact is None:  # exported models stay where they are
        from evaluator.actions.export import BestExport

        directory = export_dir(options, model_dir, several)
        check_export_dir(directory, model_dir)
        actions.append(BestExport(directory, model_dir, options.best_metric, options.keep_best,
                                  ("checkpoint", *options.export), log, shared, options.name, model))
    return actions


def check_best_metric(metric: str | None, model: Any) -> None:
    """ConfigError unless the model computes `metric` (`NAME`, or `SET/NAME`)."""
    if metric is None:
        return
    dataset, _, name = metric.rpartition("/")
    names = list(model.suite.names)
    if name not in names or (dataset and dataset not in model.sets.names):
        sets = f"; validation sets: {', '.join(model.sets.names)}" if model.sets.named else ""
        raise ConfigError(f"--best-metric {metric}: this task computes {', '.join(names)}{sets} "
                          "(SET/NAME chooses another set than the first)")


def check_export_dir(directory: str, model_dir: str) -> None:
    """ConfigError if the best would be kept in the model directory itself, where what leaves the
    best is removed (training's own checkpoints)."""
    if os.path.realpath(directory) == os.path.realpath(model_dir):
        raise ConfigError(f"--export-dir {directory} is the model directory: the best kept needs a directory "
                          "of its own (checkpoints that leave the best are removed from it)")
