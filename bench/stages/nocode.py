"""Stage `nocode`: 12. restore + evaluate one checkpoint of the realistic model (bench/workload.py)
with `--meta-graph` (the trainer's graph imported from its `.meta`, each checkpoint's `.meta`
compared with it) against the same model's task (`--task bench/workload.py:TASK`)."""

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
    return {"nocode": {
        "parameters": workload.parameters(), "examples": workload.examples(), "device": imported.device,
        "meta_graph_s": statistics.median(ours_s), "task_s": statistics.median(theirs_s),
        "ratio": statistics.median(ours_s) / statistics.median(theirs_s), "same_accuracy": agree,
    }}


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "nocode" not in results:
        return []
    cost = results["nocode"]
    return [(f"12. no code: restore + evaluate one checkpoint with --meta-graph ({cost['parameters'] / 1e6:.1f} M "
             f"params, {cost['examples']} examples, {cost['device']})",
             f"{cost['meta_graph_s'] * 1000:.0f} ms (ratio {cost['ratio']:.3f}); the same accuracy: "
             f"{'yes' if cost['same_accuracy'] else 'NO'}",
             f"the task path (--task): {cost['task_s'] * 1000:.0f} ms",
             f"<= {TARGETS['cost_ratio']}x", met(cost["ratio"] <= TARGETS["cost_ratio"]))]
