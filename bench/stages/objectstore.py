"""Stage `objectstore`: a model directory on S3 (moto's server on loopback): from the upload of a
checkpoint to the start of its evaluation (bounded by --poll-interval), the download of a
checkpoint into staging against a plain s3fs get of the same files, and a poll's listing cost."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import DIGITS, DIGITS_TASK, ROOT, Row, Watch, wait

if TYPE_CHECKING:
    from bench.run import Sizes

POLL_INTERVAL = 0.5


def measure(work: Path, sizes: Sizes) -> dict[str, Any]:
    from tests.objectstore import client, s3_server, sync_upload

    with s3_server() as env:
        fs = client("s3://bench", env)
        fs.mkdir("bench")
        return {"objectstore": {**_latency(work, sizes, env, fs, sync_upload), **_download(work, sizes, env, fs),
                                **_listing(sizes, env, fs), "poll_interval": POLL_INTERVAL}}


def _latency(work: Path, sizes: Sizes, env: dict[str, str], fs: Any, sync_upload: Any) -> dict[str, Any]:
    """Checkpoints uploaded one at a time (shards, index, then the state file naming it); seconds from
    the end of each upload to the start of its evaluation."""
    local = work / "objectstore-train"
    count = sizes.objectstore_checkpoints
    subprocess.run([sys.executable, str(DIGITS / "train.py"), str(local), "--steps", str(10 * count),
                    "--save-every", "10", "--max-to-keep", str(count), "--relative-paths"], check=True, cwd=ROOT,
                   capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    names = [f"model.ckpt-{10 * (i + 1)}" for i in range(count)]
    watch = Watch("s3://bench/run", work / "objectstore.db", DIGITS_TASK,  # type: ignore[arg-type]
                  env={**env, "XDG_CACHE_HOME": str(work / "cache"), "XDG_DATA_HOME": str(work / "data")},
                  args=("--poll-interval", str(POLL_INTERVAL), "--keep-best", "0")).wait_ready()
    uploaded: dict[str, float] = {}
    try:
        for index, name in enumerate(names):
            state = local / "state" / name
            state.mkdir(parents=True)
            (state / "checkpoint").write_text(f'model_checkpoint_path: "{name}"\n' + "".join(
                f'all_model_checkpoint_paths: "{n}"\n' for n in names[: index + 1]))
            for file in sorted(local.glob(f"{name}.*")):
                (state / file.name).symlink_to(file)
            sync_upload(fs, state, "bench/run", [], pause=0)  # the state file first
            sync_upload_files(fs, state, name)
            uploaded[name] = time.time()
            wait(lambda n=name: any(r["checkpoint"] == n for r in watch.rows()), 120, watch, f"row of {name}")
        rows = watch.rows()
    finally:
        watch.stop()
    delays = [_when(r["started_at"]) - uploaded[r["checkpoint"]] for r in rows if r["checkpoint"] in uploaded]
    return {"checkpoints": count, "ok": sum(r["status"] == "ok" for r in rows),
            "upload_to_start_median_s": round(statistics.median(delays), 3),
            "upload_to_start_max_s": round(max(delays), 3)}


def sync_upload_files(fs: Any, directory: Path, name: str) -> None:
    for file in [*sorted(directory.glob(f"{name}.data-*")), directory / f"{name}.index"]:
        fs.put_file(str(file), f"bench/run/{file.name}")


def _when(value: Any) -> float:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace(" ", "T"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _download(work: Path, sizes: Sizes, env: dict[str, str], fs: Any) -> dict[str, Any]:
    """A checkpoint of `objectstore_mb` MiB in 4 shards, staged by the source, then fetched with a
    plain s3fs get of the same files; MiB/s of each (best of 3)."""
    from evaluator.sources import remote

    shard = os.urandom(sizes.objectstore_mb * (1 << 20) // 4)
    names = [f"big.ckpt-1.data-0000{i}-of-00004" for i in range(4)] + ["big.ckpt-1.index"]
    for name in names:
        fs.pipe_file(f"bench/big/{name}", shard if ".data-" in name else b"index")
    os.environ.update(env, XDG_CACHE_HOME=str(work / "cache"))
    source = remote.RemoteDirectory("s3://bench/big", weight_files=False, poll_interval=0.05, pin_budget=1 << 40)
    ckpt = source._checkpoint("big.ckpt-1")
    source.refresh()
    source.refresh()
    size = 4 * len(shard)
    staged, plain = [], []
    for _ in range(3):
        start = time.perf_counter()
        held = source.hold(ckpt)
        staged.append(time.perf_counter() - start)
        held.close()
        source.done(ckpt)  # its row: the staged copy goes
        with tempfile.TemporaryDirectory(dir=work) as target:
            start = time.perf_counter()
            fs.get([f"bench/big/{n}" for n in names], [os.path.join(target, n) for n in names])
            plain.append(time.perf_counter() - start)
    mib = size / (1 << 20)
    return {"download_mib": round(mib, 1), "staged_mib_s": round(mib / min(staged), 1),
            "plain_get_mib_s": round(mib / min(plain), 1)}


def _listing(sizes: Sizes, env: dict[str, str], fs: Any) -> dict[str, Any]:
    """A poll of a prefix holding `objectstore_objects` objects: milliseconds (median of 5)."""
    from evaluator.sources import remote

    count = sizes.objectstore_objects
    fs.pipe({f"bench/many/model.ckpt-{i}.data-00000-of-00001": b"x" for i in range(count)})
    source = remote.RemoteDirectory("s3://bench/many", weight_files=False, poll_interval=1.0, pin_budget=0)
    times, plain = [], []
    for _ in range(5):
        start = time.perf_counter()
        source.refresh()
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        fs.invalidate_cache("bench/many")
        fs.ls("bench/many", detail=True)
        plain.append(time.perf_counter() - start)
    return {"objects": count, "listing_ms": round(statistics.median(times) * 1000, 1),
            "plain_ls_ms": round(statistics.median(plain) * 1000, 1)}


def table_rows(results: dict[str, Any]) -> list[Row]:
    if "objectstore" not in results:
        return []
    r = results["objectstore"]
    return [
        (f"S3: upload -> evaluation start, --poll-interval {r['poll_interval']:g} s (median / max)",
         f"{r['upload_to_start_median_s']:.2f} s / {r['upload_to_start_max_s']:.2f} s "
         f"({r['ok']}/{r['checkpoints']} ok)", "", "within a poll interval or two", ""),
        (f"S3: a {r['download_mib']:g} MiB checkpoint staged (4 shards)", f"{r['staged_mib_s']:g} MiB/s",
         f"plain s3fs get: {r['plain_get_mib_s']:g} MiB/s", "as fast as a plain get", ""),
        (f"S3: one poll's listing of {r['objects']} objects", f"{r['listing_ms']:g} ms",
         f"plain s3fs ls: {r['plain_ls_ms']:g} ms", "", ""),
    ]
