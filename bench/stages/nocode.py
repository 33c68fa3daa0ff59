"""Stage `nocode`: 12. restore + evaluate one checkpoint of the realistic model (bench/workload.py)
with `--meta-graph` (the trainer's graph imported from its `.meta`, each checkpoint's `.meta`
compared with it) against the same model's task (`--task bench/workload.py:TASK`); and, for the
record, one export of the same checkpoints (the evaluator's own `--export savedmodel` / `frozen` of
them) evaluated with `--savedmodel` and `--frozen-graph`, each in a graph of its own."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import TARGETS, Row, met, race

if TYPE_CHECKING:
    from bench.run import Sizes

#: The workload trainer's tensors: its unnamed placeholder and its logits.
INPUT, OUTPUT = "Placeholder:0", "logits/add:0"


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
    """12. one checkpoint through --meta-graph against the task path, on the same checkpoints and data."""
    import numpy as np

    from bench import workload
    from evaluator import checkpoints, models, nocode

    model_dir = work / "nocode"
    workload.write_checkpoints(str(model_dir), sizes.cost_checkpoints)
    listed = checkpoints.read_state(str(model_dir)).checkpoints
    data = work / "nocode-valid.npz"
    features, labels = workload.TASK.validation_data()
    np.savez(data, x=features, y=labels)
    request = nocode.parse(meta_graph=True, savedmodel=False, frozen_graph=False, input_name=INPUT,
                           output_name=OUTPUT, signature=None, data=(str(data),), data_keys=None, feature=None,
                           label=None, task=None, locations=1, roots=0)
    assert request is not None
    imported = models.build(nocode.task(request, nocode.first_meta(str(model_dir))), device="auto",
                            batch_size=workload.TASK.batch_size)
    task = models.build(workload.TASK, device="auto", batch_size=workload.TASK.batch_size)
    agree = True
    for ckpt in listed:  # warm both up once; the same numbers
        ours, theirs = imported.evaluate(ckpt), task.evaluate(ckpt)
        agree = agree and ours.metrics.accuracy == theirs.metrics.accuracy and ours.ema_source == theirs.ema_source
    ours_s, theirs_s = race(imported.evaluate, task.evaluate, listed, sizes.cost_rounds)
    exports = _exports(work, listed, data, task, sizes.cost_rounds)
    return {"nocode": {
        "parameters": workload.parameters(), "examples": workload.examples(), "device": imported.device,
        "meta_graph_s": statistics.median(ours_s), "task_s": statistics.median(theirs_s),
        "ratio": statistics.median(ours_s) / statistics.median(theirs_s), "same_accuracy": agree,
        **exports,
    }}


def _exports(work: Path, listed: list[Any], data: Path, task: Any, rounds: int) -> dict[str, Any]:
    """Each checkpoint exported as a SavedModel version and a frozen graph (the averages), evaluated
    with --savedmodel and --frozen-graph: seconds per export and whether the accuracy is the task's."""
    import tensorflow as tf

    from bench import workload
    from evaluator import models, nocode
    from evaluator.checkpoints import EMA_NAME
    from evaluator.models.export import graph_export
    from evaluator.sources.artifacts import FROZEN, SAVEDMODEL, listing

    spec = tf.TensorSpec([None, workload.FEATURES], tf.float32)
    for ckpt in listed:
        for fmt, target in (("savedmodel", f"savedmodel/{ckpt.name_step}"), ("frozen", f"frozen/{ckpt.name_step}.pb")):
            graph_export(fmt, workload.TASK, spec, ckpt.path, ema=True, ema_name=EMA_NAME,
                         target=str(work / "nocode-exports" / target))
    expected = {ckpt.name_step: task.evaluate(ckpt).metrics.accuracy for ckpt in listed}
    figures: dict[str, Any] = {}
    for mode, kind, options in ((nocode.SAVEDMODEL, SAVEDMODEL, {}),
                                (nocode.FROZEN, FROZEN, {"input_name": "features", "output_name": "logits"})):
        location = str(work / "nocode-exports" / ("savedmodel" if kind == SAVEDMODEL else "frozen"))
        request = nocode.parse(meta_graph=False, savedmodel=mode == nocode.SAVEDMODEL, frozen_graph=mode == nocode.FROZEN,
                               input_name=options.get("input_name"), output_name=options.get("output_name"),
                               signature=None, data=(str(data),), data_keys=None, feature=None, label=None,
                               task=None, locations=1, roots=0)
        assert request is not None
        first = nocode.first(request, location)
        assert first is not None
        model = models.build(nocode.task(request, first), device="auto", batch_size=workload.TASK.batch_size)
        found = listing(location, kind)
        same = all(model.evaluate(export).metrics.accuracy == expected[export.name_step] for export in found)
        seconds = [time_of(model.evaluate, export) for _ in range(rounds) for export in found]
        figures[f"{kind}_s"] = statistics.median(seconds)
        figures[f"{kind}_same_accuracy"] = same
    return figures


def time_of(call: Any, argument: Any) -> float:
    import time

    start = time.perf_counter()
    call(argument)
    return time.perf_counter() - start


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "nocode" not in results:
        return []
    cost = results["nocode"]
    return [(f"12. no code: restore + evaluate one checkpoint with --meta-graph ({cost['parameters'] / 1e6:.1f} M "
             f"params, {cost['examples']} examples, {cost['device']})",
             f"{cost['meta_graph_s'] * 1000:.0f} ms (ratio {cost['ratio']:.3f}); the same accuracy: "
             f"{'yes' if cost['same_accuracy'] else 'NO'}",
             f"the task path (--task): {cost['task_s'] * 1000:.0f} ms",
             f"<= {TARGETS['cost_ratio']}x", met(cost["ratio"] <= TARGETS["cost_ratio"])),
            ("12. no code: one export of the same checkpoints (its averages) with --savedmodel, --frozen-graph "
             "(a graph built per export)",
             f"SavedModel version {cost['savedmodel_s'] * 1000:.0f} ms, frozen graph "
             f"{cost['frozen-graph_s'] * 1000:.0f} ms; the task's accuracy: "
             f"{'yes' if cost['savedmodel_same_accuracy'] and cost['frozen-graph_same_accuracy'] else 'NO'}",
             f"the task path: {cost['task_s'] * 1000:.0f} ms", "", "")]
