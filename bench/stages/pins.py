"""Stage `pins`: 13. what pinning costs per checkpoint (a hard link, a copy) and what it buys: the
`ok` rows behind a trainer saving every step with max_to_keep=2, watched from before it starts and
started at the same moment, against the previous release (no pins) in the same run."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import DIGITS, DIGITS_TASK, ROOT, Row, Watch, digits_trainer, link_checkpoint
from bench.previous import not_measured, previous_release

if TYPE_CHECKING:
    from bench.run import Sizes


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
    """13. the pin's cost (link, copy; and letting go) on the digits and the realistic model's
    checkpoints; `ok` rows of a fast trainer's saves, this version and the previous release."""
    from bench import workload

    big = _big_checkpoints(work, workload)
    costs = {"digits": _costs(work, "digits", _digits_checkpoints(work), sizes.pins_costs),
             f"{workload.parameters() / 1e6:.1f} M-parameter": _costs(work, "big", big, max(3, sizes.pins_costs // 20))}
    previous = previous_release()
    trainers: dict[str, Any] = {}
    for label, tree in (("this", None), ("previous", Path(previous["path"]) if "path" in previous else None)):
        if label == "previous" and tree is None:
            trainers[label] = {"error": not_measured(previous)}
            continue
        trainers[label] = {"watched first": _trainer(work / f"first-{label}", sizes.pins_saves, tree, together=False),
                           "started together": _trainer(work / f"together-{label}", sizes.pins_together, tree,
                                                        together=True)}
    return {"pins": {"costs": costs, "trainers": trainers, "saves": sizes.pins_saves,
                     "together": sizes.pins_together}}


def _digits_checkpoints(work: Path) -> tuple[Path, list[str]]:
    staged = work / "pins-digits-staged"
    names = digits_trainer().train(str(staged), steps=20, save_every=20, max_to_keep=5)
    return staged, [os.path.basename(n) for n in names]


def _big_checkpoints(work: Path, workload: Any) -> tuple[Path, list[str]]:
    staged = work / "pins-big-staged"
    workload.write_checkpoints(str(staged), 1)
    return staged, sorted(p.name[: -len(".index")] for p in staged.glob("*.index"))


def _costs(work: Path, label: str, staged: tuple[Path, list[str]], count: int) -> dict[str, float]:
    """ms per checkpoint to pin by hard link, by copy (the pins' directory on tmpfs, when that is
    another file system), and to let go."""
    import structlog

    from evaluator import checkpoints
    from evaluator.sources.pins import OWN_DIR, Pins

    source, (prefix, *_) = staged
    model_dir = work / f"pins-{label}"
    model_dir.mkdir()
    names = [f"model.ckpt-{index}" for index in range(1, count + 1)]
    for name in names:
        link_checkpoint(source, prefix, model_dir, name)
    found: dict[str, float] = {}
    elsewhere = Path("/dev/shm") / f"evaluator-bench-pins-{os.getpid()}-{label}"
    modes = ["link"] + (["copy"] if Path("/dev/shm").is_dir() and os.stat("/dev/shm").st_dev != os.stat(work).st_dev
                        else [])
    for mode in modes:
        own = model_dir / OWN_DIR
        if mode == "copy":
            elsewhere.mkdir()
            own.symlink_to(elsewhere, target_is_directory=True)
        pins = Pins(str(model_dir), "default", 1 << 40, structlog.get_logger())
        ckpts = [checkpoints.at(str(model_dir), name) for name in names]
        pinned, released = [], []
        for ckpt in ckpts:
            start = time.perf_counter()
            assert ckpt is not None and pins.pin(ckpt)
            pinned.append(time.perf_counter() - start)
        for ckpt in ckpts:
            start = time.perf_counter()
            pins.release(ckpt)  # type: ignore[arg-type]
            released.append(time.perf_counter() - start)
        found[f"{mode}_ms"] = 1000 * statistics.median(pinned)
        found[f"{mode}_release_ms"] = 1000 * statistics.median(released)
        if own.is_symlink():
            own.unlink()
        shutil.rmtree(own, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)
    found["bytes"] = sum(p.stat().st_size for p in source.glob(prefix + ".*"))
    return found


def _trainer(model_dir: Path, saves: int, tree: Path | None, *, together: bool) -> dict[str, int]:
    """A trainer saving every step, keeping two: rows by status once it is done."""
    model_dir.mkdir()
    train = [sys.executable, str(DIGITS / "train.py"), str(model_dir), "--steps", str(saves), "--save-every", "1",
             "--max-to-keep", "2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    watch = Watch(model_dir, model_dir.with_suffix(".db"), DIGITS_TASK, tree=tree, args=("--missing-grace", "1"))
    if not together:
        watch.wait_ready()
    trainer = subprocess.Popen(train, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    trainer.wait(timeout=600)
    if together:
        watch.wait_ready()
    # Done when every save has a row, or when no row came for 5 s (what got none never will).
    count, quiet_since = -1, time.time()
    while len(rows := watch.rows()) < saves and time.time() - quiet_since < 5:
        if len(rows) != count:
            count, quiet_since = len(rows), time.time()
        time.sleep(0.25)
    rows = watch.rows()
    watch.stop()
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return statuses


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "pins" not in results:
        return []
    pins = results["pins"]
    rows: list[Row] = []
    for label, cost in pins["costs"].items():
        copy = (f"; a copy {cost['copy_ms']:.2f} ms (letting go {cost['copy_release_ms']:.2f} ms)"
                if "copy_ms" in cost else "")
        rows.append((f"13. pinning a checkpoint of the {label} model ({cost['bytes'] / 1e6:.2f} MB)",
                     f"a hard link {cost['link_ms']:.2f} ms (letting go {cost['link_release_ms']:.2f} ms){copy}",
                     "", "", ""))

    def said(found: dict[str, Any], key: str, total: int) -> str:
        if "error" in found:
            return found["error"]
        got = found[key]
        return f"{got.get('ok', 0)} of {total} ok" + (f", {got['missing']} missing" if got.get("missing") else "")

    this, previous = pins["trainers"]["this"], pins["trainers"]["previous"]
    for key, total in (("watched first", pins["saves"]), ("started together", pins["together"])):
        rows.append((f"13. a trainer saving every step, max_to_keep=2, {key}", said(this, key, total),
                     f"previous release (no pins): {said(previous, key, total)}", f"{total} of {total} ok",
                     "yes" if "error" not in this and this[key].get("ok", 0) == total else "NO"))
    return rows
