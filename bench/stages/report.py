"""Stage `report`: 5. every `evaluator report` form on 1,000 and 1,000,000 rows, this version beside
the previous release; the query plans; `--help`; every row streamed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import ROOT, TARGETS, WORKLOAD_TASK, Row, met
from bench.previous import PREVIOUS_REVISION, not_measured, previous_release

if TYPE_CHECKING:
    from bench.run import Sizes

#: Each `report` form measured, by name: its arguments.
REPORT_FORMS = {
    "last_10": ("--last", "10"), "best": ("--best",), "dataset": ("--dataset", "validation"),
    "metric": ("--metric", "loss"), "best_by": ("--best-by", "loss"), "root": ("--root", "/data/jobs"),
    "model_dir": ("--model-dir", "/data/jobs/job1"), "json": ("--last", "10", "--format", "json"),
    "csv": ("--last", "10", "--format", "csv"),
}
#: Within this factor of the same report on 1,000 rows (the issue's target).
REPORT_GROWTH_TARGET = 1.25
#: Run in a subprocess: each form through the CLI, the statements it sent, each one's EXPLAIN QUERY PLAN.
_PLANS = r"""
import contextlib, io, json, sqlite3, sys
from sqlalchemy import Engine, event
from evaluator.cli import main
db, forms = sys.argv[1], json.loads(sys.argv[2])
raw = sqlite3.connect(db)
found = {}
for form, args in forms.items():
    sent = []
    def keep(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))
    event.listen(Engine, "before_cursor_execute", keep)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            main(["report", *args, "--db", "sqlite:///" + db])
    except SystemExit:
        pass
    finally:
        event.remove(Engine, "before_cursor_execute", keep)
    plans = {}
    for statement, parameters in sent:
        sql = " ".join(statement.split())
        if sql not in plans:
            plans[sql] = [r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters)]
    found[form] = [{"sql": sql, "plan": plan} for sql, plan in plans.items()]
print(json.dumps(found))
"""


def _report_rows(db: Path, rows: int, jobs: int) -> None:
    """`rows` evaluations over `jobs` model directories, each with its metrics rows as `watch` writes
    them (accuracy, loss, examples of the set "validation"), inserted in big batches."""
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA synchronous = OFF")
    now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    settings = json.dumps({"task": WORKLOAD_TASK, "ema": True, "batch_size": 256}, sort_keys=True)
    per_job, batch, ident = rows // jobs, 100_000 // jobs, 0
    with connection:
        for start in range(0, per_job, batch):
            evaluations, metrics = [], []
            for j in range(jobs):
                for i in range(start, min(per_job, start + batch)):
                    ident += 1
                    accuracy, loss = 0.5 + (i % 997) / 2000, 1.0 / (i + 1)
                    evaluations.append((ident, f"/data/jobs/job{j}", "default", f"model.ckpt-{i * 100}", f"{i:016x}",
                                        i * 100, "ok", accuracy, loss, 10_000, "tf1-names", 0.05, 1.0, "cpu", now,
                                        now, now, settings))
                    metrics += [(ident, "validation", "accuracy", accuracy, "max"),
                                (ident, "validation", "loss", loss, "min"),
                                (ident, "validation", "examples", 10_000.0, None)]
            connection.executemany(
                "INSERT INTO evaluations (id, model_dir, name, checkpoint, fingerprint, step, status, accuracy, loss, "
                "examples, ema_source, restore_seconds, eval_seconds, device, detected_at, started_at, evaluated_at, "
                "settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", evaluations)
            connection.executemany("INSERT INTO metrics (evaluation_id, dataset, name, value, goal) "
                                   "VALUES (?, ?, ?, ?, ?)", metrics)
    connection.close()


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
    """5. every `report` form on 1,000 and on 1,000,000 rows (4 model directories), this version and
    the previous release: seconds and the ratio (within 1.25x); the query plans of what a report
    asks; `evaluator --help`; every row as JSON, CSV and a table."""
    from alembic import command

    from evaluator.store import Store, alembic_config

    jobs = 4
    previous = previous_release()
    old_env = {**os.environ, "PYTHONPATH": previous.get("path", "")}

    def build(rows: int) -> tuple[Path, Path, float]:
        """(the previous release's database, this version's: the same rows, upgraded; the upgrade's seconds)."""
        old, new = work / f"report-{rows}-previous.db", work / f"report-{rows}.db"
        if "path" in previous:  # its own schema, by its own code
            subprocess.run([sys.executable, "-m", "evaluator", "db", "upgrade", "--db", f"sqlite:///{old}"], check=True,
                           cwd=work, env=old_env, stdout=subprocess.DEVNULL)
        else:
            with Store.open(f"sqlite:///{old}", create=True) as store, store.engine.begin() as connection:
                cfg = alembic_config()
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, PREVIOUS_REVISION)
        _report_rows(old, rows, jobs)
        shutil.copyfile(old, new)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "evaluator", "db", "upgrade", "--db", f"sqlite:///{new}"], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
        return old, new, time.perf_counter() - start

    start = time.perf_counter()
    small_old, small, _ = build(sizes.report_small_rows)
    large_old, large, upgrade_s = build(sizes.report_rows)
    build_s = time.perf_counter() - start
    url = f"sqlite:///{large}"

    def run(db: Path, args: tuple[str, ...], old: bool = False) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "evaluator", "report", *args, "--db", f"sqlite:///{db}"], check=True,
                       cwd=work if old else ROOT, env=old_env if old else None,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    def pair(args: tuple[str, ...], old: bool, repeats: int) -> tuple[float, float]:
        """Median seconds on the small and on the large database, runs alternating."""
        dbs = (small_old, large_old) if old else (small, large)
        runs: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeats):
            for db, times in zip(dbs, runs):
                times.append(run(db, args, old))
        return statistics.median(runs[0]), statistics.median(runs[1])

    for db, old in ((small, False), (large, False), *(((small_old, True), (large_old, True)) if "path" in previous else ())):
        run(db, ("--last", "1"), old)  # warm: the file in the page cache, the modules' bytecode
    forms: dict[str, dict[str, Any]] = {}
    for form, args in REPORT_FORMS.items():
        small_s, large_s = pair(args, False, sizes.report_repeats)
        forms[form] = {"args": list(args), "small_s": small_s, "large_s": large_s, "ratio": large_s / small_s}
        if "path" in previous:
            old_small_s, old_large_s = pair(args, True, sizes.report_previous_repeats)
            forms[form].update(previous_small_s=old_small_s, previous_large_s=old_large_s,
                               previous_ratio=old_large_s / old_small_s)

    def plans(db: Path, old: bool) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-c", _PLANS, str(db), json.dumps(REPORT_FORMS)], check=True,
                              cwd=work if old else ROOT, env=old_env if old else None, capture_output=True, text=True)
        return json.loads(done.stdout)

    def scans(found: dict[str, Any]) -> dict[str, list[str]]:
        """Per form, the plan lines that read a whole table of `evaluations` or `metrics`."""
        return {form: [line for q in queries for line in q["plan"]
                       if line.startswith(("SCAN evaluations", "SCAN metrics"))] for form, queries in found.items()}

    current_plans = plans(large, old=False)
    previous_plans = plans(large_old, old=True) if "path" in previous else {}

    def python_start() -> float:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    def imported(module: str) -> float:
        code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        return statistics.median(float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                                      text=True, check=True).stdout) for _ in range(3))

    def help_s() -> float:
        runs = []
        for _ in range(sizes.report_repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "evaluator", "--help"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    query = []
    with Store.open(url, create=False) as store:
        for _ in range(5):
            start = time.perf_counter()
            store.history(last=10)
            query.append(time.perf_counter() - start)

    # Every row streamed: on a history of its own size (1,000,000 rows as JSON alone take minutes).
    if sizes.report_stream_rows == sizes.report_rows:
        streamed = large
    else:
        streamed = work / "report-stream.db"
        with Store.open(f"sqlite:///{streamed}", create=True) as store, store.engine.begin() as connection:
            cfg = alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, PREVIOUS_REVISION)
        _report_rows(streamed, sizes.report_stream_rows, jobs)
        subprocess.run([sys.executable, "-m", "evaluator", "db", "upgrade", "--db", f"sqlite:///{streamed}"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)

    def everything(fmt: str) -> tuple[float, float]:
        """`report --last 1000000 --format FMT` on every row: seconds and the process's peak RSS (MB)."""
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) parent.
        code = ("import sys; from evaluator.cli import main\n"
                "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
                "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
                "print(hwm.split()[1], file=sys.stderr)")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, "report", "--last", "1000000", "--format", fmt,
                               "--db", f"sqlite:///{streamed}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=True)
        return time.perf_counter() - start, int(done.stderr.strip().splitlines()[-1]) / 1024

    return {"report": {
        "rows": sizes.report_rows, "small_rows": sizes.report_small_rows, "model_dirs": jobs,
        "metrics_per_row": 3, "growth_target": REPORT_GROWTH_TARGET, "previous_release": previous,
        "build_s": build_s, "upgrade_s": upgrade_s, "forms": forms,
        "report_last_10_s": forms["last_10"]["large_s"], "report_json_s": forms["json"]["large_s"],
        "report_one_dir_s": forms["model_dir"]["large_s"],
        "plans": current_plans, "full_scans": scans(current_plans),
        "previous_plans": previous_plans, "previous_full_scans": scans(previous_plans),
        "help_s": help_s(),
        "query_ms": 1000 * statistics.median(query),
        "python_startup_s": python_start(),
        "import_sqlalchemy_orm_s": imported("sqlalchemy.orm"),
        "import_rich_table_s": imported("rich.table"),
        "stream_rows": sizes.report_stream_rows,
        **{f"all_rows_{fmt}_{what}": value for fmt in ("json", "csv", "table")
           for what, value in zip(("s", "peak_rss_mb"), everything(fmt))},
    }}


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "report" not in results:
        return []
    rows: list[Row] = []
    rep = results["report"]
    rows.append((f"5. `evaluator report --last 10`, {rep['rows']:,} rows",
                 f"{rep['report_last_10_s']:.2f} s (json {rep['report_json_s']:.2f} s, one dir "
                 f"{rep['report_one_dir_s']:.2f} s). Of it: Python start {rep['python_startup_s']:.2f} s, "
                 f"`import sqlalchemy.orm` {rep['import_sqlalchemy_orm_s']:.2f} s, the query "
                 f"{rep['query_ms']:.0f} ms",
                 "", f"< {TARGETS['report_seconds']} s", met(rep["report_last_10_s"] < TARGETS["report_seconds"])))
    previous = rep["previous_release"]
    for form in rep["forms"].values():
        then = (f"previous release: {form['previous_small_s']:.2f} s -> {form['previous_large_s']:.2f} s "
                f"({form['previous_ratio']:.2f}x)" if "previous_ratio" in form
                else not_measured(previous))
        rows.append((f"5. `report {' '.join(form['args'])}`, {rep['small_rows']:,} -> {rep['rows']:,} rows",
                     f"{form['small_s']:.2f} s -> {form['large_s']:.2f} s ({form['ratio']:.2f}x)", then,
                     f"<= {rep['growth_target']}x", met(form["ratio"] <= rep["growth_target"])))
    scanned = sorted({line for lines in rep["full_scans"].values() for line in lines})
    scanned_before = sorted({line for lines in rep["previous_full_scans"].values() for line in lines})
    rows.append((f"5. the report's queries on {rep['rows']:,} rows (EXPLAIN QUERY PLAN, all in the JSON)",
                 f"full scans of evaluations or metrics: {'; '.join(scanned) or 'none'}",
                 f"previous release: {'; '.join(scanned_before) or 'none'}" if previous.get("path") else "",
                 "none", met(not scanned)))
    rows.append((f"5. `evaluator db upgrade` of {rep['rows']:,} rows to this version (series, indexes)",
                 f"{rep['upgrade_s']:.1f} s", "", "", ""))
    rows.append(("5. `evaluator --help` start-up", f"{rep['help_s']:.2f} s", "", "", ""))
    rows.append((f"5. `report --last 1000000` on all {rep['stream_rows']:,} rows",
                 "; ".join(f"{fmt} {rep[f'all_rows_{fmt}_s']:.1f} s, peak {rep[f'all_rows_{fmt}_peak_rss_mb']:.0f} MB"
                           for fmt in ("json", "csv", "table")) + " (a table shows 1000 rows per run)",
                 "", "", ""))
    return rows
