"""Stage `metrics`: 9. five metrics on two validation sets, the evaluator against a hand-written
loop computing the same."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import TARGETS, Row, met, race

if TYPE_CHECKING:
    from bench.run import Sizes


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
    """9. five metrics on two validation sets: the evaluator against a hand-written loop computing the same."""
    from bench import workload
    from bench.baseline import HandWrittenMetrics
    from evaluator import checkpoints
    from evaluator.models.device import select_device
    from evaluator.models.graph import GraphModel

    model_dir = work / "metrics"
    workload.write_checkpoints(str(model_dir), sizes.cost_checkpoints)
    listed = checkpoints.read_state(str(model_dir)).checkpoints
    task = workload.METRICS_TASK
    evaluator = GraphModel.build(task, device="auto", batch_size=task.batch_size)
    hand = HandWrittenMetrics(task, select_device("auto").config, task.batch_size, workload.CLASSES)
    largest = 0.0
    for ckpt in listed:  # warm both up once; compare every value
        ours, theirs = evaluator.evaluate(ckpt).metrics.values, hand(ckpt.path)
        largest = max([largest] + [abs(ours[s][m] - theirs[s][m]) for s in theirs for m in theirs[s]])
    ours_s, theirs_s = race(evaluator.evaluate, lambda ckpt: hand(ckpt.path), listed, sizes.cost_rounds)
    return {"metrics": {
        "parameters": workload.parameters(), "examples": workload.examples(), "device": evaluator.device,
        "sets": len(task.validation_data()), "metrics": len(evaluator.suite.names),
        "evaluator_s": statistics.median(ours_s), "handwritten_s": statistics.median(theirs_s),
        "ratio": statistics.median(ours_s) / statistics.median(theirs_s), "largest_difference": largest,
    }}


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "metrics" not in results:
        return []
    rows: list[Row] = []
    met_ = results["metrics"]
    rows.append((f"9. {met_['metrics']} metrics on {met_['sets']} validation sets, one checkpoint "
                 f"({met_['parameters'] / 1e6:.1f} M params, {met_['examples']} examples per set, {met_['device']})",
                 f"{met_['evaluator_s'] * 1000:.0f} ms (ratio {met_['ratio']:.3f}); values within "
                 f"{met_['largest_difference']:.1e} of the loop's",
                 f"hand-written loop, same metrics: {met_['handwritten_s'] * 1000:.0f} ms",
                 f"<= {TARGETS['cost_ratio']}x", met(met_["ratio"] <= TARGETS["cost_ratio"])))
    return rows
