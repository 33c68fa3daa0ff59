"""The work queue: claims on checkpoints (an owner and an expiry, renewed by a heartbeat, taken over
once expired) and the `workers` table, so that two evaluators never evaluate one checkpoint twice.

Every time that decides ownership (a claim's expiry, its take-over, a heartbeat, a worker's age) is
the database's clock, read in the transaction that uses it: a worker whose own clock is minutes off
(no NTP, a VM after suspend) still sees a live claim as live. SQLite serves one machine, whose clock
it is.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from evaluator.evaluation import CheckpointKey, Worker
from evaluator.schema import ClaimRow, EvaluationRow, WorkerRow
from evaluator.store.database import Database, _upsert
from evaluator.store.rows import _matches, _recorded_keys


class Claim(str, enum.Enum):
    """What asking to evaluate a checkpoint got."""

    #: Ours until recorded or released (or until it expires without a heartbeat).
    CLAIMED = "claimed"
    #: Another evaluator holds a live claim on it.
    HELD = "held"
    #: It already has a row.
    RECORDED = "recorded"


class WorkQueue(Database):
    """Claims and workers."""

    def claim(self, key: CheckpointKey, owner: str, lease: float) -> Claim:
        """Claim `key` for `owner` for `lease` seconds, taking over a claim that has expired."""
        return self.claim_many([key], owner, lease)[0]

    def claim_many(self, keys: list[CheckpointKey], owner: str, lease: float) -> list[Claim]:
        """Claim each of `keys` for `owner` in one transaction (a backlog's batch: one commit and a
        few statements, not one of each per checkpoint); what each claim got, in order.

        One upsert: insert the claims, or overwrite those that are `owner`'s own or have expired.
        """
        upsert = _upsert(self.engine.dialect.name)
        with self._writing() as session:
            now = _clock(session)
            expires_at = now + timedelta(seconds=lease)
            if upsert is None:  # a backend without INSERT ... ON CONFLICT: one key at a time
                return [self._claim_one(session, key, owner, now, expires_at) for key in keys]
            recorded = _recorded_keys(session, keys)
            wanted = [key for key in keys if key not in recorded]
            won: set[CheckpointKey] = set()
            if wanted:
                # The excluded row is the one proposed: (owner, now, expiry). One statement, compiled
                # once and cached, sent with every key's parameters (SQLAlchemy's insertmanyvalues).
                stmt = upsert(ClaimRow)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["model_dir", "name", "checkpoint", "fingerprint"],
                    set_={"owner": stmt.excluded.owner, "claimed_at": stmt.excluded.claimed_at,
                          "expires_at": stmt.excluded.expires_at},
                    where=or_(ClaimRow.expires_at < stmt.excluded.claimed_at, ClaimRow.owner == stmt.excluded.owner),
                )
                # RETURNING names the rows written: the claims won (an ORM rowcount is not reliable everywhere).
                won = {CheckpointKey(*row) for row in session.execute(
                    stmt.returning(ClaimRow.model_dir, ClaimRow.name, ClaimRow.checkpoint, ClaimRow.fingerprint),
                    [_claim_values(key, owner, now, expires_at) for key in wanted])}
                # The upsert may have waited for another evaluator's transaction that recorded some of
                # these very checkpoints and dropped its claims (PostgreSQL, read committed): look again.
                late = _recorded_keys(session, [key for key in wanted if key in won])
                for key in late:
                    session.execute(delete(ClaimRow).where(*_matches(ClaimRow, key), ClaimRow.owner == owner))
                recorded |= late
            return [Claim.RECORDED if key in recorded else Claim.CLAIMED if key in won else Claim.HELD
                    for key in keys]

    @staticmethod
    def _claim_one(session: Session, key: CheckpointKey, owner: str, now: datetime, expires_at: datetime) -> Claim:
        """One claim without INSERT ... ON CONFLICT: delete an expired (or our own) claim, then insert."""
        if session.scalar(select(EvaluationRow.id).where(*_matches(EvaluationRow, key)).limit(1)):
            return Claim.RECORDED
        session.execute(delete(ClaimRow).where(*_matches(ClaimRow, key),
                                               or_(ClaimRow.expires_at < now, ClaimRow.owner == owner)))
        if session.scalar(select(ClaimRow.id).where(*_matches(ClaimRow, key))) is not None:
            return Claim.HELD
        session.execute(insert(ClaimRow).values(**_claim_values(key, owner, now, expires_at)))
        return Claim.CLAIMED

    def holder(self, key: CheckpointKey) -> str | None:
        """Who holds the claim on `key`, if anyone."""
        with self._reading() as session:
            return session.scalar(select(ClaimRow.owner).where(*_matches(ClaimRow, key)))

    def take_over(self, key: CheckpointKey, dead: str, owner: str, lease: float) -> bool:
        """Move `dead`'s claim on `key` to `owner` (the holder is known to be gone); False if it moved meanwhile."""
        with self._writing() as session:
            now = _clock(session)
            result = session.execute(update(ClaimRow).where(*_matches(ClaimRow, key), ClaimRow.owner == dead)
                                     .values(owner=owner, claimed_at=now, expires_at=now + timedelta(seconds=lease)))
            return bool(result.rowcount)

    def renew(self, owner: str, lease: float) -> int:
        """Push back the expiry of every claim `owner` holds (the heartbeat); returns how many."""
        with self._writing() as session:
            result = session.execute(update(ClaimRow).where(ClaimRow.owner == owner)
                                     .values(expires_at=_clock(session) + timedelta(seconds=lease)))
            return int(result.rowcount or 0)

    def release_claims(self, owner: str, key: CheckpointKey | None = None) -> None:
        """Drop `owner`'s claims (or just the one on `key`): it stopped, or put the checkpoint back."""
        with self._writing() as session:
            session.execute(delete(ClaimRow).where(
                ClaimRow.owner == owner, *(_matches(ClaimRow, key) if key is not None else ())))

    # -- workers ------------------------------------------------------------------------------

    def beat(self, worker: Worker) -> None:
        """Insert or refresh `worker`'s row (its heartbeat). Its own times (started, evaluating since)
        are moved onto the database's clock by the difference between the two clocks now."""
        with self._writing() as session:
            now = _clock(session)
            skew = now - datetime.now(timezone.utc)
            values = {"owner": worker.owner, "host": worker.host, "pid": worker.pid, "lease": worker.lease,
                      "model_dirs": json.dumps(worker.model_dirs), "evaluating": worker.evaluating,
                      "evaluating_since": worker.evaluating_since + skew if worker.evaluating_since else None,
                      "started_at": worker.started_at + skew, "heartbeat_at": now}
            found = session.scalar(select(WorkerRow.id).where(WorkerRow.owner == worker.owner))
            if found is None:
                session.execute(insert(WorkerRow).values(**values))
            else:
                session.execute(update(WorkerRow).where(WorkerRow.id == found).values(**values))

    def leave(self, owner: str) -> None:
        """`owner` stops: its row goes."""
        with self._writing() as session:
            session.execute(delete(WorkerRow).where(WorkerRow.owner == owner))

    def clock(self) -> datetime:
        """The database's time now (what `workers`' ages are measured against)."""
        with self._reading() as session:
            return _clock(session)

    def workers(self) -> list[Worker]:
        """Every worker that has a row, by host and pid (`heartbeat_at` says who is still alive)."""
        with self._reading() as session:
            rows = session.scalars(select(WorkerRow).order_by(WorkerRow.host, WorkerRow.pid))
            return [Worker(owner=r.owner, host=r.host, pid=r.pid, lease=r.lease, model_dirs=json.loads(r.model_dirs),
                           evaluating=r.evaluating, evaluating_since=r.evaluating_since, started_at=r.started_at,
                           heartbeat_at=r.heartbeat_at) for r in rows]


def _claim_values(key: CheckpointKey, owner: str, now: datetime, expires_at: datetime) -> dict[str, Any]:
    return {"model_dir": key.model_dir, "name": key.name, "checkpoint": key.checkpoint,
            "fingerprint": key.fingerprint, "owner": owner, "claimed_at": now, "expires_at": expires_at}


def _clock(session: Session) -> datetime:
    """The database server's time (UTC, aware): PostgreSQL's now(), the transaction's start; SQLite
    (one machine) this machine's."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(select(func.timezone("UTC", func.now()))).replace(tzinfo=timezone.utc)
    return datetime.now(timezone.utc)
