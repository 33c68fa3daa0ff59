"""Stage `keras`: 8. the TF2 path, restore (Keras use_ema) + evaluate against a hand-written eager
loop, and `watch`'s RSS over many Keras checkpoints."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import KERAS_WORKLOAD_TASK, TARGETS, Row, met, race, rss_over_checkpoints

if TYPE_CHECKING:
    from bench.run import Sizes


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
    """8. the TF2 path: restore (EMA) + evaluate one Keras checkpoint of the realistic model against a
    hand-written eager loop in the same process; RSS of `watch` over many Keras checkpoints."""
    from bench import keras_workload
    from evaluator import checkpoints
    from evaluator.models.keras import KerasModel

    model_dir = work / "keras-cost"
    keras_workload.write_checkpoints(str(model_dir), sizes.cost_checkpoints)
    listed = checkpoints.read_state(str(model_dir)).checkpoints
    ours_model = KerasModel.build(keras_workload.TASK, device="auto", batch_size=keras_workload.TASK.batch_size)
    hand = keras_workload.HandWrittenEager(keras_workload.TASK.batch_size)
    for ckpt in listed:  # warm both up
        ours_model.evaluate(ckpt)
        hand(ckpt.path)
    ours, theirs = race(ours_model.evaluate, lambda ckpt: hand(ckpt.path), listed, sizes.cost_rounds)

    staged = work / "keras-memory-staged"
    keras_workload.write_checkpoints(str(staged), 1)
    memory_dir = work / "keras-memory"
    memory_dir.mkdir()
    samples, _ = rss_over_checkpoints(staged, "ckpt-1", "ckpt", memory_dir, KERAS_WORKLOAD_TASK, sizes)
    first, last = sizes.memory_marks[0], sizes.memory_marks[-1]
    return {"keras": {
        "parameters": int(sum(np.prod(v.shape) for v in ours_model.variables)), "examples": ours_model.examples,
        "device": ours_model.device, "evaluator_s": statistics.median(ours), "handwritten_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs), "traces": ours_model.traces,
        "rss_mb": samples, "growth_mb": samples[last] - samples[first], "from": first, "to": last,
    }}


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "keras" not in results:
        return []
    rows: list[Row] = []
    ker = results["keras"]
    rows.append((f"8. TF2: restore (Keras use_ema) + evaluate one checkpoint ({ker['parameters'] / 1e6:.1f} M params, "
                 f"{ker['examples']} examples, {ker['device']})",
                 f"{ker['evaluator_s'] * 1000:.0f} ms (ratio {ker['ratio']:.3f}); forward pass traced {ker['traces']}x",
                 f"hand-written eager loop (ckpt.read + tf.function): {ker['handwritten_s'] * 1000:.0f} ms",
                 f"<= {TARGETS['cost_ratio']}x", met(ker["ratio"] <= TARGETS["cost_ratio"])))
    rss = ker["rss_mb"]
    rows.append((f"8. TF2: RSS after {ker['from']} and {ker['to']} Keras checkpoints",
                 f"{rss[ker['from']]:.0f} MB -> {rss[ker['to']]:.0f} MB (growth {ker['growth_mb']:+.1f} MB)", "",
                 f"growth < {TARGETS['memory_growth_mb']:.0f} MB", met(ker["growth_mb"] < TARGETS["memory_growth_mb"])))
    return rows
