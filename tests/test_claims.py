"""claims: who owns a claim, when a dead owner's claim is taken over, the heartbeat that renews."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from evaluator.claims import Heartbeat, died_here, owner_id
from evaluator.evaluation import CheckpointKey
from evaluator.store import Claim, Store
from tests.conftest import sqlite_url

KEY = CheckpointKey("/jobs/a", "default", "model.ckpt-1", "ffff")


def test_owner_ids_name_this_host_and_process() -> None:
    first, second = owner_id(), owner_id()
    host, pid, rand = first.split(":")
    assert (host, int(pid)) == (socket.gethostname(), os.getpid()) and first != second and len(rand) == 8


def test_died_here_only_for_a_gone_process_on_this_host() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert died_here(f"{socket.gethostname()}:{gone.pid}:abcd1234")
    assert not died_here(owner_id())  # this process
    assert not died_here(f"{socket.gethostname()}:1:abcd1234")  # alive (init)
    assert not died_here(f"another-host:{gone.pid}:abcd1234")  # elsewhere: only expiry tells
    assert not died_here("garbage")


def test_take_over_moves_only_the_dead_owners_claim(db: Path) -> None:
    store = Store.open(sqlite_url(db), create=True)
    store.upgrade()
    assert store.claim(KEY, "dead", lease=60) is Claim.CLAIMED
    assert store.holder(KEY) == "dead"
    assert not store.take_over(KEY, "someone-else", "me", lease=60)
    assert store.take_over(KEY, "dead", "me", lease=60)
    assert store.holder(KEY) == "me" and store.claim(KEY, "other", lease=60) is Claim.HELD


def test_the_heartbeat_renews_only_while_holding(db: Path) -> None:
    store = Store.open(sqlite_url(db), create=True)
    store.upgrade()
    assert store.claim(KEY, "me", lease=0.6) is Claim.CLAIMED
    beat = Heartbeat(store, "me", lease=0.6)
    beat.holding.set()
    beat.start()
    try:
        time.sleep(1.5)  # over twice the lease: alive only through renewals
        assert store.claim(KEY, "other", lease=60) is Claim.HELD
        beat.holding.clear()
        time.sleep(1.0)
        assert store.claim(KEY, "other", lease=60) is Claim.CLAIMED  # no renewal: expired
    finally:
        beat.stop()
