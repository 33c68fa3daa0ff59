"""A private PostgreSQL server for the tests: initdb into a temporary directory, started with pg_ctl
on a free local port, as an unprivileged user (PostgreSQL refuses to run as root), stopped and
removed at the end. Each test gets a database of its own on it."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's postgresql packages put the server binaries, newest first.
_BIN_GLOB = "/usr/lib/postgresql/*/bin"
USER = "evaluator"


def binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, if PostgreSQL's server is installed."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(glob.glob(_BIN_GLOB), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    for directory in reversed(found):
        if os.access(os.path.join(directory, "initdb"), os.X_OK):
            return Path(directory)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One running server; `url(database)` for SQLAlchemy, stop() / start() to take it away."""

    bin: Path
    data: Path
    port: int
    run_as: str | None
    #: Tests run without fsync (speed); the benchmark with it, as a real server runs.
    fsync: bool = False

    def _command(self, *args: str) -> list[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        return ["runuser", "-u", self.run_as, "--", *command] if self.run_as else command

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c max_connections=200"
                   + ("" if self.fsync else " -c fsync=off"))
        subprocess.run(self._command("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.data / "log"),
                                     "-w", "-t", "60", "start"), check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self._command("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"),
                       check=False, capture_output=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_server(fsync: bool = False) -> Iterator[Server]:
    """initdb + start; yields the server; stops and removes it."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL's server (initdb, pg_ctl) is not installed: apt-get install postgresql")
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres" if _user_exists("postgres") else "nobody"
    base = Path(tempfile.mkdtemp(prefix="evaluator-pg-"))
    data = base / "data"
    data.mkdir()
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (base, data):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    subprocess.run([*(["runuser", "-u", run_as, "--"] if run_as else []), str(bin_dir / "initdb"), "-D", str(data),
                    "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    server = Server(bin_dir, data, _free_port(), run_as, fsync)
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def wait_accepting(server: Server, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={server.port} user={USER} dbname=postgres").close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
