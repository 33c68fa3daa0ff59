"""bench: the smoke run (tiny sizes) completes and reports every figure, so the benchmark can't rot.

Figures are not asserted against their targets here: machines running the tests are shared and
noisy. `python -m bench` on a quiet machine does that, and bench/RESULTS.md records a run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow


def test_the_smoke_benchmark_reports_every_figure(tmp_path: Path) -> None:
    figures_path, table_path = tmp_path / "results.json", tmp_path / "results.md"
    result = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(figures_path),
                             "--markdown", str(table_path)], cwd=ROOT, capture_output=True, text=True,
                            env=cli_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    assert {"machine", "latency", "idle", "cost", "memory", "report", "throughput", "poll", "keras", "metrics", "pool",
            "nocode", "catchup", "pins", "objectstore"} <= set(figures)

    latency = figures["latency"]
    assert latency["evaluator_evaluated"] == latency["checkpoints"]  # every checkpoint, each once
    assert latency["evaluator_median_ms"] > 0 and latency["classic_spaced_evaluated"] >= 1
    assert figures["cost"]["same_accuracy"] is True  # the evaluator and the hand-written loop agree
    assert figures["cost"]["ratio"] > 0
    assert set(figures["memory"]["rss_mb"]) == {"3", "6"}
    assert figures["idle"]["cpu_seconds"] >= 0
    assert figures["report"]["report_last_10_s"] > 0 and figures["report"]["rows"] == 2000
    throughput = figures["throughput"]
    assert throughput["ok"] == throughput["checkpoints"]
    assert figures["cost"]["claim_ms"] > 0
    assert figures["report"]["all_rows_json_s"] > 0 and figures["report"]["all_rows_table_peak_rss_mb"] > 0
    assert figures["keras"]["traces"] == 1 and figures["keras"]["ratio"] > 0
    assert set(figures["keras"]["rss_mb"]) == {"3", "6"}
    assert figures["metrics"]["largest_difference"] < 1e-6 and figures["metrics"]["ratio"] > 0  # the same values
    assert (figures["metrics"]["sets"], figures["metrics"]["metrics"]) == (2, 5)
    pool = figures["pool"]
    assert set(pool["claim_ms"]) == {"sqlite", "postgresql"} and all(v > 0 for v in pool["claim_ms"].values())
    assert set(pool["per_minute"]) == {"1", "2"} and pool["speedup"] > 0
    assert set(pool["deciding"]) == {"sqlite", "postgresql"}  # claim, row and the best's decision, 1 and 3 workers
    assert all(set(by) == {"1", "3"} and by["3"]["decision_ms"] > 0 for by in pool["deciding"].values())
    pins = figures["pins"]
    assert all(cost["link_ms"] > 0 for cost in pins["costs"].values())
    assert pins["trainers"]["this"]["watched first"] == {"ok": pins["saves"]}  # every save, pinned on sight
    assert figures["nocode"]["same_accuracy"] is True and figures["nocode"]["ratio"] > 0  # --meta-graph = --task
    store = figures["objectstore"]
    assert store["ok"] == store["checkpoints"] == 2 and store["upload_to_start_max_s"] > 0
    assert store["staged_mib_s"] > 0 and store["plain_get_mib_s"] > 0 and store["listing_ms"] > 0 and store["plain_ls_ms"] > 0
    assert figures["nocode"]["savedmodel_same_accuracy"] is True and figures["nocode"]["frozen-graph_same_accuracy"] is True
    events = figures["poll"]["events"]
    assert events["rows"] == events["saved"] == 20  # with events, every save gets a row

    table = table_path.read_text()
    for measure in ("1. detection latency", "2. restore + evaluate", "3. RSS", "4. idle CPU", "5. `evaluator report",
                    "6. throughput", "7. a fast trainer", "8. TF2: restore", "9. 5 metrics on 2 validation sets", "10. the claim per checkpoint",
                    "10. workers sharing PostgreSQL",
                    "12. no code: restore + evaluate one checkpoint with --meta-graph", "11. catch-up",
                    "13. pinning a checkpoint", "13. a trainer saving every step"):
        assert measure in table
    assert table in result.stdout
