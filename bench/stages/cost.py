"""Stage `cost`: 2. restore + evaluate one checkpoint of the realistic model (bench/workload.py)
against a hand-written loop; the claim and the row of one checkpoint."""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import TARGETS, Row, met, race

if TYPE_CHECKING:
    from bench.run import Sizes


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
    """2. restore + evaluate one checkpoint of the realistic model: evaluator vs a hand-written loop."""
    from bench import workload
    from bench.baseline import HandWritten
    from evaluator import checkpoints
    from evaluator.evaluation import Evaluation, Status
    from evaluator.models.device import select_device
    from evaluator.models.graph import GraphModel as EvalModel
    from evaluator.store import Store

    model_dir = work / "cost"
    workload.write_checkpoints(str(model_dir), sizes.cost_checkpoints)
    listed = checkpoints.read_state(str(model_dir)).checkpoints
    evaluator = EvalModel.build(workload.TASK, device="auto", batch_size=workload.TASK.batch_size)
    hand = HandWritten(workload.TASK, select_device("auto").config, workload.TASK.batch_size)
    agree = True
    for ckpt in listed:  # warm both up once
        outcome = evaluator.evaluate(ckpt)
        accuracy, _ = hand(ckpt.path)
        agree = agree and abs(outcome.metrics.accuracy - accuracy) < 1e-9
    ours, theirs = race(evaluator.evaluate, lambda ckpt: hand(ckpt.path), listed, sizes.cost_rounds)

    store = Store.open(f"sqlite:///{work / 'record.db'}", create=True)
    store.upgrade()
    record: list[float] = []
    claim: list[float] = []
    for index in range(30):
        now = datetime.now(timezone.utc)
        row = Evaluation(model_dir="/bench", checkpoint=f"m-{index}", step=index, status=Status.OK,
                         evaluated_at=now, accuracy=0.5, loss=1.0, examples=10, ema_source="tf1-names", fingerprint="f")
        start = time.perf_counter()
        store.claim(row.key, "bench", lease=90)
        claim.append(time.perf_counter() - start)
        start = time.perf_counter()
        store.record(row, owner="bench")
        record.append(time.perf_counter() - start)
    return {"cost": {
        "parameters": workload.parameters(), "examples": workload.examples(), "device": evaluator.device,
        "checkpoint_mb": sum(p.stat().st_size for p in model_dir.glob(listed[0].name + ".*")) / 2**20,
        "evaluator_s": statistics.median(ours), "handwritten_s": statistics.median(theirs),
        "ratio": statistics.median(ours) / statistics.median(theirs), "same_accuracy": agree,
        "restore_s": statistics.median(evaluator.evaluate(c).restore_seconds for c in listed),
        "record_row_ms": 1000 * statistics.median(record),
        "claim_ms": 1000 * statistics.median(claim),
    }}


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "cost" not in results:
        return []
    rows: list[Row] = []
    cost = results["cost"]
    rows.append((f"2. restore + evaluate one checkpoint ({cost['parameters'] / 1e6:.1f} M params, "
                 f"{cost['examples']} examples, {cost['device']})",
                 f"{cost['evaluator_s'] * 1000:.0f} ms (ratio {cost['ratio']:.3f}); the claim: "
                 f"{cost['claim_ms']:.1f} ms, the row (and dropping the claim): {cost['record_row_ms']:.1f} ms",
                 f"hand-written loop: {cost['handwritten_s'] * 1000:.0f} ms",
                 f"<= {TARGETS['cost_ratio']}x", met(cost["ratio"] <= TARGETS["cost_ratio"])))
    return rows
