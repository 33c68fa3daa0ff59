"""The path of one checkpoint (or of a backlog's batch of them), top to bottom: claim it in the
database, restore and validate it, re-check that its files did not change meanwhile, retry what
may pass (a short read, a fault that is not the checkpoint's), record its row, act on it
(TensorBoard, the best kept), log one line. The service's loop decides which checkpoints and when;
this module decides what happens to each.

What one checkpoint can do ends in its row: `ok`, `failed` (it can't be restored, or its results
are not finite) or `missing`. What is not the checkpoint's fault (the validation data, the task's
code, the machine) leaves it pending and is retried with backoff; after --retries consecutive
faults the daemon exits 75 so that a supervisor restarts it once the cause is fixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from evaluator.actions import Action, Recorded, after_many
from evaluator.backlog import Pending, utcnow
from evaluator.claims import Heartbeat, died_here
from evaluator.ending import Ending
from evaluator.errors import (
    Abandoned,
    CheckpointDeferred,
    CheckpointError,
    CheckpointIncomplete,
    CheckpointMissing,
    EvaluationFault,
    FaultsExhausted,
    StoreWriteError,
    first_line,
)
from evaluator.evaluation import EXAMPLES, CheckpointKey, Evaluation, Status
from evaluator.notify import Notifier
from evaluator.options import WatchOptions
from evaluator.runs import Run
from evaluator.shutdown import Shutdown
from evaluator.sources import Held
from evaluator.store import Claim, Store

if TYPE_CHECKING:  # pragma: no cover - typing only
    from evaluator.models import EvalModel

#: Longest pause between retries of a failed database write, or after an evaluation fault.
MAX_RETRY_DELAY = 60.0
#: A short read is retried while the checkpoint's files change, or changed this recently (seconds)...
SETTLE_SECONDS = 3.0
#: ...at most this many times (backoff 0.5, 1, 2, 4, 8, 8, 8 s: about half a minute).
MAX_SHORT_READS = 8
#: Behind a backlog, checkpoints are claimed and recorded in batches of about this many seconds of
#: evaluation (a pass still takes one batch of each run in turn), at most MAX_BATCH checkpoints.
BATCH_SECONDS = 0.5
MAX_BATCH = 64


class Attempts:
    """Evaluates checkpoints of the runs one `watch` serves, with one model, one store and one
    claim owner; counts what the exit code and the status line need."""

    def __init__(self, options: WatchOptions, *, store: Store, model: EvalModel, heartbeat: Heartbeat,
                 notifier: Notifier, shutdown: Shutdown, ending: Ending, owner: str, settings: dict[str, Any],
                 log: Any, status_line: Callable[[], str]) -> None:
        self.options = options
        self.store = store
        self.model = model
        self.heartbeat = heartbeat
        self.notifier = notifier
        self.shutdown = shutdown
        self.ending = ending
        self.owner = owner
        self.settings = settings
        self.log = log
        #: The service's one-line status (systemd STATUS=), refreshed after each row.
        self.status_line = status_line
        #: The last ok evaluation, and how many of this process's ended `failed`.
        self.last: Evaluation | None = None
        self.failed = 0
        #: Faults in a row that were not a checkpoint's own (a pass stops while there are some).
        self.consecutive_faults = 0
        #: Seconds the last ok evaluation took (restore + validation): sizes the next batch.
        self.eval_seconds: float | None = None
        self._action_errors: dict[str, str] = {}

    def batch_size(self) -> int:
        """How many due checkpoints of a run to claim and record together: one while checkpoints come
        one at a time (each is claimed, evaluated and recorded at once), more behind a backlog of
        small models, where a claim and a row per checkpoint cost more than the evaluation itself.
        A batch takes about BATCH_SECONDS of evaluation; exports of the weights need one at a time."""
        if self.options.export or self.eval_seconds is None:
            return 1
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self.eval_seconds, 1e-4))))

    def batch(self, run: Run, batch: list[Pending]) -> tuple[int, bool]:
        """Claim, evaluate, record and act on some due checkpoints of one run (one claim and one
        record transaction for all of them); returns how many rows were written and whether to stop
        this pass (shutdown, a fault's backoff, the database refusing writes)."""
        held: dict[str, Held] = {}
        try:
            for pending in list(batch):
                try:
                    held[pending.checkpoint.name] = run.source.hold(pending.checkpoint)
                except CheckpointDeferred as err:  # no local copy now (staging's budget): it waits
                    run.log.debug("checkpoint deferred", checkpoint=pending.checkpoint.name, error=str(err))
                    run.backlog.defer(pending, err.retry_in)
                    batch.remove(pending)
            if not batch:
                return 0, False
            claimed = self._claim(run, batch)
            if claimed is None:
                return 0, True
            results: list[tuple[Pending, Evaluation]] = []
            stop = False
            for index, (pending, key) in enumerate(claimed):
                try:
                    evaluation = self._attempt(run, pending, key, held[pending.checkpoint.name])
                except Abandoned:
                    run.log.warning("evaluation abandoned for shutdown; it runs again at the next start",
                                    checkpoint=pending.checkpoint.name)
                    evaluation, stop = None, True
                if evaluation is not None:
                    results.append((pending, evaluation))
                stop = stop or (evaluation is None and self.consecutive_faults > 0)  # failing: wait for the backoff
                if stop or self.shutdown.requested or (evaluation is not None and self.ending.reaches(evaluation)):
                    self._release([key for _, key in claimed[index + 1:]])
                    break
            written = self._record(run, results) if results else []
            if written is None:
                return 0, True
            self._act(run, written, held)
            for pending, _ in results:
                run.source.done(pending.checkpoint)  # after the actions: the best kept links the pin
            return len(written), stop
        finally:
            self.heartbeat.holding.clear()
            self.heartbeat.evaluating(None)
            for copy in held.values():
                copy.close()

    def _act(self, run: Run, written: list[Evaluation], held: dict[str, Held]) -> None:
        """The actions on the rows just written (the model holds the last one's weights)."""
        for evaluation in written:
            self.ending.recorded(evaluation)
        if not run.actions or not written:
            return
        recorded = [Recorded(e, held[e.checkpoint].files if e.checkpoint in held else {},
                             self.model if e is written[-1] else None) for e in written]
        what = f"act on {written[0].checkpoint}" + (f" .. {written[-1].checkpoint}" if len(written) > 1 else "")
        for action in run.actions:
            self.run_action(run, action, what, lambda a=action: after_many(a, recorded))

    def settle_absent(self, run: Run, absent: list[Pending], once: bool) -> int:
        """Record the absent checkpoints that count as missing, in one transaction; the others wait
        for their files. Returns how many rows were written."""
        missing = [p for p in absent if run.backlog.is_missing(p, once=once)]
        if not once:
            decided = {p.checkpoint.name for p in missing}
            for pending in absent:
                if pending.checkpoint.name not in decided:
                    run.backlog.defer(pending, min(self.options.rescan_interval, max(0.2, run.backlog.grace / 4)))
        if not missing:
            return 0
        now = utcnow()
        rows = [replace(self._base(run, p, "", now), status=Status.MISSING, error=self._missing_reason(run, p, once),
                        started_at=None) for p in missing]
        written = self.write("record missing checkpoints", lambda: self.store.record_new(rows),
                              checkpoint=missing[0].checkpoint.name)
        if written is None:
            return 0
        for pending in missing:
            self._done(run, pending, None)
        if len(written) < len(rows):  # the others have a row already: another evaluator's, said by its log
            run.log.debug("already recorded by another evaluator", count=len(rows) - len(written))
        if len(written) <= 3:
            for row in written:
                self._log_evaluation(run, row)
        else:
            run.log.warning("checkpoints missing", count=len(written), first=written[0].checkpoint,
                            last=written[-1].checkpoint, status=Status.MISSING.value, error=written[0].error)
        self.notifier.status(self.status_line())
        return len(written)

    def _missing_reason(self, run: Run, pending: Pending, once: bool) -> str:
        if pending.seen_on_disk:
            return f"{pending.checkpoint.name} was deleted before it could be read (training's max_to_keep?)"
        return (f"{pending.checkpoint.name} is listed in the state file but never appeared on disk "
                + ("while newer checkpoints did" if once
                   else f"within {run.backlog.grace:g} s while newer checkpoints did"))

    def _base(self, run: Run, pending: Pending, fingerprint: str, started_at: Any) -> Evaluation:
        ckpt = pending.checkpoint
        return Evaluation(model_dir=run.model_dir, checkpoint=ckpt.name, step=ckpt.name_step,
                          status=Status.FAILED, evaluated_at=started_at, name=self.options.name,
                          fingerprint=fingerprint, settings=self.settings,
                          device=self.model.device if self.model else None,
                          detected_at=pending.detected_at, started_at=started_at)

    def _claim(self, run: Run, batch: list[Pending]) -> list[tuple[Pending, CheckpointKey]] | None:
        """Claim the checkpoints of `batch` still on disk, in one transaction; the ones now ours (None:
        shutdown came while the database refused writes). Those recorded meanwhile are done; those
        another evaluator holds wait (unless it died on this host)."""
        keyed = []
        for pending in batch:
            fingerprint = run.source.fingerprint(pending.checkpoint)
            if fingerprint is None:
                continue  # deleted since the look: the next pass records it missing
            run.backlog.saw_on_disk(pending)
            keyed.append((pending, CheckpointKey(run.model_dir, self.options.name, pending.checkpoint.name, fingerprint)))
        if not keyed:
            return []
        keys = [key for _, key in keyed]
        claims = self.write("claim the checkpoint", lambda: self.store.claim_many(keys, self.owner, self.options.lease),
                             checkpoint=keys[0].checkpoint)
        if claims is None:
            run.log.warning("stopping while the database refuses writes; the checkpoint runs again at the next "
                            "start", checkpoint=keys[0].checkpoint)
            return None
        ours = []
        for (pending, key), claim in zip(keyed, claims):
            if claim is Claim.RECORDED:
                self._done(run, pending, key.fingerprint)
            elif claim is Claim.HELD and not self._take_over_from_the_dead(run, key):
                run.log.debug("claimed by another evaluator", checkpoint=key.checkpoint)
                run.backlog.defer(pending, min(self.options.lease / 3, 5.0))
            else:
                ours.append((pending, key))
        return ours

    def _release(self, keys: list[CheckpointKey]) -> None:
        """Give back claims this evaluator will not evaluate now (another may take them at once)."""
        for key in keys:
            self.write("release the claim", lambda k=key: self.store.release_claims(self.owner, k),
                        checkpoint=key.checkpoint)

    def _attempt(self, run: Run, pending: Pending, key: CheckpointKey, held: Held) -> Evaluation | None:
        """Evaluate one claimed checkpoint; None when it stays pending (a short read or a fault to
        retry: its claim is given back)."""
        ckpt = pending.checkpoint
        self.heartbeat.holding.set()  # until the batch's rows are written
        self.heartbeat.evaluating(ckpt.path)
        try:
            evaluation = self._evaluate(run, pending, key.fingerprint, held.path)
            after = run.source.fingerprint(ckpt)
            if after is not None and after != key.fingerprint:  # still being written while we read it
                raise CheckpointIncomplete(f"{ckpt.name} changed while it was evaluated")
            return evaluation
        except (CheckpointIncomplete, EvaluationFault, Abandoned) as err:
            self._release([key])
            if isinstance(err, Abandoned):
                raise
            if isinstance(err, CheckpointIncomplete):
                if self._retry_short_read(run, pending, err):
                    return None
                return replace(self._base(run, pending, key.fingerprint, utcnow()), error=str(err))
            return self._fault(run, pending, key.fingerprint, err)

    def _take_over_from_the_dead(self, run: Run, key: CheckpointKey) -> bool:
        """Take a claim whose holder was a process on this host that is gone (`kill -9`, then a
        restart): no need to wait for its lease to expire."""
        holder = self.write("read the claim", lambda: self.store.holder(key), checkpoint=key.checkpoint)
        if not holder or not died_here(holder):
            return False
        taken = self.write("take over the claim",
                            lambda: self.store.take_over(key, holder, self.owner, self.options.lease),
                            checkpoint=key.checkpoint)
        if taken:
            run.log.info("took over the claim of an evaluator that died on this host", checkpoint=key.checkpoint,
                         dead=holder)
        return bool(taken)

    def _evaluate(self, run: Run, pending: Pending, fingerprint: str, path: str) -> Evaluation:
        """Restore and validate one checkpoint: its row (ok, failed, missing). Raises
        CheckpointIncomplete, EvaluationFault and Abandoned for the caller to decide. `path`: the held
        copy to restore from (a local source: the checkpoint itself)."""
        ckpt = pending.checkpoint
        self.notifier.status(f"evaluating {ckpt.name} ({len(run.backlog)} pending)")
        run.log.debug("evaluation started", checkpoint=ckpt.name, owner=self.owner)
        base = self._base(run, pending, fingerprint, utcnow())
        try:
            outcome = self.model.evaluate(replace(ckpt, path=path), progress=self._progress)
        except (CheckpointIncomplete, EvaluationFault):
            raise
        except CheckpointMissing as err:
            return replace(base, status=Status.MISSING, error=str(err), evaluated_at=utcnow())
        except CheckpointError as err:
            return replace(base, error=str(err), evaluated_at=utcnow())
        except Exception as err:  # anything else is not known to be the checkpoint's doing
            raise EvaluationFault(f"{type(err).__name__}: {first_line(err)}") from err
        metrics = outcome.metrics
        self.consecutive_faults = 0
        for warning in outcome.warnings:
            run.log.warning(warning, checkpoint=ckpt.name)
        return replace(base, status=Status.OK, step=outcome.step, accuracy=metrics.accuracy,
                       loss=metrics.loss, examples=metrics.examples, metrics=metrics.stored(), goals=metrics.goals,
                       ema_source=outcome.ema_source,
                       restore_seconds=outcome.restore_seconds, eval_seconds=metrics.seconds,
                       evaluated_at=utcnow())

    def _retry_short_read(self, run: Run, pending: Pending, err: CheckpointIncomplete) -> bool:
        """Whether to try a short read again: while the checkpoint's files are still changing."""
        files = run.source.files(pending.checkpoint)
        newest = max((mtime for _, _, mtime in files), default=0) / 1e9
        growing = files != pending.files or time.time() - newest < SETTLE_SECONDS
        pending.files = files
        pending.short_reads += 1
        if not growing or pending.short_reads >= MAX_SHORT_READS:
            return False
        delay = min(0.5 * 2 ** (pending.short_reads - 1), 8.0)
        run.log.info("checkpoint still being written (a read came up short, or it changed while read); will retry",
                     checkpoint=pending.checkpoint.name, error=str(err), retry_in=delay, tries=pending.short_reads)
        run.backlog.defer(pending, delay)
        return True

    def _fault(self, run: Run, pending: Pending, fingerprint: str, err: EvaluationFault) -> Evaluation | None:
        """A fault that is not the checkpoint's: retry with backoff; give up on the daemon after
        --retries in a row, or on this checkpoint alone after --retries while others succeeded."""
        self.consecutive_faults += 1
        pending.faults += 1
        tries, limit = self.consecutive_faults, self.options.retries
        if tries >= limit:
            raise FaultsExhausted(
                f"evaluating failed {tries} times in a row for a reason that is not the checkpoints' own: "
                f"{err}. Fix the task or its environment; the checkpoints stay pending"
            )
        if pending.faults >= limit:  # other checkpoints succeeded meanwhile: it is this one's
            self.consecutive_faults = 0
            return replace(self._base(run, pending, fingerprint, utcnow()), error=str(err))
        delay = min(self.options.retry_delay * 2 ** (tries - 1), MAX_RETRY_DELAY)
        run.log.warning("evaluation failed, not for the checkpoint's sake; will retry",
                        checkpoint=pending.checkpoint.name, error=str(err), retry_in=delay, tries=tries, limit=limit)
        self.notifier.status(f"evaluation failing, retry in {delay:g} s: {err}")
        run.backlog.defer(pending, delay)
        return None

    def _progress(self, examples: int) -> None:
        """After each validation batch: the loop is alive; give up if shutdown's grace is over."""
        self.notifier.ping()
        self.shutdown.check()

    @staticmethod
    def _done(run: Run, pending: Pending, fingerprint: str | None) -> None:
        """`pending` has a row (ours, or another evaluator's): off the backlog, its pin let go."""
        run.backlog.done(pending, fingerprint)
        run.source.done(pending.checkpoint)

    def _record(self, run: Run, results: list[tuple[Pending, Evaluation]]) -> list[Evaluation] | None:
        """Write the rows (dropping our claims) in one transaction, retrying while the database
        refuses; returns those written (a row another evaluator wrote first is kept, not doubled).
        None when shutdown came first (no row: the checkpoints run again at the next start)."""
        evaluations = [evaluation for _, evaluation in results]
        written = self.write("record the evaluation",
                              lambda: self.store.record_new(evaluations, self.owner),
                              checkpoint=evaluations[0].checkpoint)
        if written is None:
            run.log.error("stopping with an unrecorded result; the checkpoint runs again at the next start",
                          checkpoint=evaluations[0].checkpoint, count=len(evaluations))
            return None
        ours = {id(e) for e in written}
        for pending, evaluation in results:
            run.backlog.done(pending, evaluation.fingerprint)  # (its pin goes after the actions: batch())
            if id(evaluation) not in ours:
                run.log.warning("already recorded by another evaluator; kept that row", checkpoint=evaluation.checkpoint)
                continue
            if evaluation.status is Status.OK:
                self.last = run.last = evaluation
                if evaluation.eval_seconds is not None and evaluation.restore_seconds is not None:
                    self.eval_seconds = evaluation.eval_seconds + evaluation.restore_seconds
            elif evaluation.status is Status.FAILED:
                self.failed += 1
            self._log_evaluation(run, evaluation)
        self.notifier.status(self.status_line())
        return written

    def write(self, what: str, write: Any, **fields: Any) -> Any:
        """Run a database write, retrying with backoff while it fails for a reason that may pass
        (disk full, read-only, locked, the server away); None when shutdown came first."""
        delay = 1.0
        while True:
            try:
                return write()
            except StoreWriteError as err:
                self.log.warning(f"cannot {what}; will retry", error=str(err), retry_in=delay, **fields)
                self.notifier.status(f"cannot write the database, retrying: {err}")
                if self._sleep(delay):
                    return None
                delay = min(delay * 2, MAX_RETRY_DELAY)

    def _sleep(self, seconds: float) -> bool:
        """Wait `seconds`, still feeding the systemd watchdog; True if shutdown was requested."""
        interval = (self.notifier.watchdog_interval or seconds * 2) / 2
        remaining = seconds
        while remaining > 0:
            self.notifier.ping()
            if self.shutdown.wait(min(remaining, interval)):
                return True
            remaining -= interval
        return False

    def _log_evaluation(self, run: Run, e: Evaluation) -> None:
        fields: dict[str, Any] = {"step": e.step, "checkpoint": e.checkpoint, "status": e.status.value}
        if e.status is Status.OK:
            fields.update(flat_metrics(e.metrics or {}))
            if len(e.metrics or {}) < 2:
                fields["examples"] = e.examples
            fields.update(ema=e.ema_source, restore_seconds=round(e.restore_seconds or 0.0, 4),
                          eval_seconds=round(e.eval_seconds or 0.0, 4), device=e.device)
            run.log.info("evaluated", **fields)
        else:
            run.log.warning("evaluated", error=e.error, **fields)

    def run_action(self, run: Run, action: Action, what: str, call: Any) -> None:
        """An action's failure is logged (a repeat of the same failure at debug level: a read-only
        directory would say so on every checkpoint), never the daemon's end."""
        try:
            call()
        except Exception as err:  # noqa: BLE001 - summaries or exports must not stop evaluations
            error = f"{type(err).__name__}: {first_line(err)}"
            key = f"{run.model_dir}:{action.name}"
            repeated = self._action_errors.get(key) == error
            self._action_errors[key] = error
            hint = ("; give --summary-dir / --export-dir a writable directory (or --no-summaries, --keep-best 0)"
                    if isinstance(err, PermissionError) or "Read-only" in error else "")
            (run.log.debug if repeated else run.log.warning)(f"{action.name} failed to {what}{hint}", error=error)


def flat_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Every metric as one field: `accuracy` with one validation set, `<set>/accuracy` with several."""
    one = len(metrics) == 1
    return {(name if one else f"{dataset}/{name}"): round(value, 6) if isinstance(value, float) else value
            for dataset, values in metrics.items() for name, value in values.items()
            if not (one and name == EXAMPLES)}
