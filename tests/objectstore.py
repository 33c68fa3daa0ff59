"""Object-storage servers on loopback for the tests and the benchmark: moto's S3 server (in this
process, on a free port) and gcp-storage-emulator (a subprocess), with the environment each cloud's
client reads (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST), and uploads in a sync tool's order."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"no server on port {port}")


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server; yields the environment a client needs."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    _wait_port(port)
    try:
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        server.stop()


@contextmanager
def gcs_server() -> Iterator[dict[str, str]]:
    """gcp-storage-emulator (in memory) in a subprocess; yields the environment a client needs."""
    port = _free_port()
    command = [os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator"), "start",
               "--host=127.0.0.1", f"--port={port}", "--in-memory"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def client(url: str, env: dict[str, str]) -> Any:
    """A fresh fsspec file system for `url`'s scheme, talking to the server of `env`."""
    os.environ.update(env)
    if url.startswith("s3://"):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True)
    import gcsfs

    logging.getLogger("gcsfs").setLevel(logging.ERROR)
    return gcsfs.GCSFileSystem(skip_instance_cache=True)


def checkpoint_files(model_dir: Path, name: str) -> list[Path]:
    """A checkpoint's files: its shards, then its index."""
    shards = sorted(model_dir.glob(f"{name}.data-*"))
    return [*shards, model_dir / f"{name}.index"]


def sync_upload(fs: Any, model_dir: Path, path: str, names: list[str], *, pause: float = 0.3,
                index_first: bool = False) -> None:
    """Upload checkpoints as a sync tool does: the state file first, then each checkpoint's files
    one by one with pauses (the index last, or first)."""
    fs.put_file(str(model_dir / "checkpoint"), f"{path}/checkpoint")
    for name in names:
        files = checkpoint_files(model_dir, name)
        if index_first:
            files = [files[-1], *files[:-1]]
        for file in files:
            fs.put_file(str(file), f"{path}/{file.name}")
            time.sleep(pause)
