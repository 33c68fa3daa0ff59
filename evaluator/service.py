"""The daemon: start-up, the loop that evaluates every checkpoint exactly once, shutdown.

    wake (state-file event, an `.index` written, re-scan tick, start-up)
      -> pending = checkpoints seen (state file, files on disk) without a row     (backlog.py)
      -> for each, oldest step first: claim -> restore (EMA) -> validate -> record one row
         (and drop the claim) -> log, STATUS
      -> wait for the next wake

The watcher only reads the state file and wakes the loop; what is pending is derived from what
was seen and from the database, never from events alone, so a missed event delays a checkpoint
(until the next tick) and a restart resumes exactly where the rows end.

What one checkpoint can do ends in its row: `ok`, `failed` (it can't be restored, or its results
are not finite) or `missing`. What is not the checkpoint's fault (the validation data, the task's
code, the machine) leaves it pending and is retried with backoff; after --retries consecutive
faults the daemon exits 75 so that a supervisor restarts it once the cause is fixed.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from evaluator import checkpoints, log
from evaluator.actions import Action, Recorded
from evaluator.actions.setup import build_actions
from evaluator.backlog import Backlog, Pending, utcnow
from evaluator.checkpoints import Checkpoint
from evaluator.claims import Heartbeat, died_here, owner_id
from evaluator.ending import Ending
from evaluator.errors import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    Abandoned,
    CheckpointError,
    CheckpointIncomplete,
    CheckpointMissing,
    DatabaseError,
    EvaluationFault,
    FaultsExhausted,
    ModelDirError,
    StateFileError,
    StoreWriteError,
    TemporaryError,
    first_line,
)
from evaluator.evaluation import EXAMPLES, CheckpointKey, Evaluation, Status
from evaluator.notify import Notifier
from evaluator.options import WatchOptions
from evaluator.shutdown import Shutdown
from evaluator.store import Claim, Store, describe
from evaluator.task import batch_size_of, load_task
from evaluator.watcher import Watcher

if TYPE_CHECKING:  # pragma: no cover - typing only
    from evaluator.models import EvalModel

#: Longest pause between retries of a failed database write, or after an evaluation fault.
MAX_RETRY_DELAY = 60.0
#: How often to look for the model directory while it is missing.
MISSING_DIR_TICK = 1.0
#: A short read is retried while the checkpoint's files change, or changed this recently (seconds)...
SETTLE_SECONDS = 3.0
#: ...at most this many times (backoff 0.5, 1, 2, 4, 8, 8, 8 s: about half a minute).
MAX_SHORT_READS = 8
#: Seconds of quiet after which the database connection is released (files not held open).
RELEASE_AFTER = 2.0
#: Up to this many new checkpoints are logged one line each; more make one summary line.
DETAIL_LINES = 10


class Service:
    """One model directory, one evaluation model, one database: `evaluator watch`."""

    def __init__(self, options: WatchOptions, notifier: Notifier | None = None) -> None:
        self.options = options
        self.model_dir = checkpoints.normalize_model_dir(options.model_dir)
        self.log = log.get(model_dir=self.model_dir)
        self.notifier = notifier or Notifier()
        self.shutdown = Shutdown(options.stop_grace)
        self.store: Store | None = None
        self.model: EvalModel | None = None
        self.watcher: Watcher | None = None
        self.heartbeat: Heartbeat | None = None
        self.backlog = Backlog(self.model_dir, grace=options.missing_grace)
        self.owner = owner_id()
        self._settings = options.settings()
        self._wake = threading.Event()
        #: Set while a pass of the loop runs (see _on_change).
        self._busy = threading.Event()
        self._lock = threading.Lock()
        self._state_problem: str | None = None
        self._present: bool | None = None
        self._last: Evaluation | None = None
        self._last_rescan = -math.inf
        #: When the rows were last read from the database (at start, then by each re-scan).
        self._rows_loaded_at = -math.inf
        self._consecutive_faults = 0
        self._failed_this_run = 0
        self._said_waiting = False
        self.actions: list[Action] = []
        self._action_errors: dict[str, str] = {}
        self.ending = Ending(options.until_step, options.idle_timeout,
                             os.path.join(self.model_dir, options.done_file) if options.done_file else None)
        #: Set when the done file appeared: evaluate what is pending, then stop (like --once).
        self._finishing = False

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> int:
        """Start, evaluate until stopped (or once), stop; returns the exit status. Raises ConfigError
        for what can't work, TemporaryError for what may work after a restart."""
        with self.shutdown.handling_signals(on_signal=self._wake.set):
            try:
                self._start()
                self._loop()
            except TemporaryError as err:
                self.log.error("exiting to be restarted", error=str(err), exit_code=err.exit_code)
                raise
            finally:
                self._stop()
        return self._exit_code()

    def _start(self) -> None:
        # Every check of the configuration comes before the database is touched: bad input
        # writes nothing (not even a new, empty database).
        self._check_model_dir()
        Store.check_durable(self.options.db_url)
        self.log.info("starting", task=self.options.task, db=describe(self.options.db_url),
                      name=self.options.name, device=self.options.device, ema=self.options.ema,
                      mode="once" if self.options.once else ("poll" if self.options.poll else "events"))
        log.quiet_tensorflow()
        self.model = self._build(load_task(self.options.task))
        self.actions = build_actions(self.options, self.model_dir, self.model, self.log)
        self.store = Store.prepare(self.options.db_url, wait=self.options.db_wait, on_retry=self._db_retry)
        self._check_settings()
        self.backlog.set_recorded(self.store.recorded(self.model_dir, self.options.name))
        self._rows_loaded_at = time.monotonic()
        self.log.info("database ready", db=describe(self.options.db_url), revision=self.store.revision(),
                      recorded=self.backlog.recorded_count())
        self._catch_up()
        self.heartbeat = Heartbeat(self.store, self.owner, self.options.lease)
        self.heartbeat.start()
        if not self.options.once:
            self.watcher = Watcher(self.model_dir, self._on_change, on_written=self._on_written,
                                   weight_files=self.model.reads_weight_files,
                                   poll=self.options.poll, poll_interval=self.options.poll_interval)
            self.watcher.start()
        self.notifier.ready(self._status_line())

    def _catch_up(self) -> None:
        """Each action does what the rows already recorded call for and it has not done."""
        assert self.store is not None
        if not self.actions:
            return
        rows = list(self.store.ok_rows(self.model_dir, self.options.name))
        for action in self.actions:
            self._run_action(action, "catch up", lambda a=action: a.catch_up(rows))

    def _run_action(self, action: Action, what: str, run: Any) -> None:
        """An action's failure is logged (a repeat of the same failure at debug level: a read-only
        directory would say so on every checkpoint), never the daemon's end."""
        try:
            run()
        except Exception as err:  # noqa: BLE001 - summaries or exports must not stop evaluations
            error = f"{type(err).__name__}: {first_line(err)}"
            repeated = self._action_errors.get(action.name) == error
            self._action_errors[action.name] = error
            hint = ("; give --summary-dir / --export-dir a writable directory (or --no-summaries, --keep-best 0)"
                    if isinstance(err, PermissionError) or "Read-only" in error else "")
            (self.log.debug if repeated else self.log.warning)(f"{action.name} failed to {what}{hint}", error=error)

    def _db_retry(self, reason: str, delay: float) -> None:
        self.log.warning("database unavailable at start; retrying", error=reason, retry_in=delay)
        self.notifier.status(f"waiting for the database: {reason}")

    def _check_model_dir(self) -> None:
        try:
            self.model_dir.encode("utf-8")
        except UnicodeEncodeError:
            raise ModelDirError(
                f"model directory {self.model_dir!r} is not valid UTF-8: rows name it as text; rename it"
            ) from None
        if os.path.isdir(self.model_dir) or self.options.wait_for_dir:
            return
        if os.path.exists(self.model_dir):
            raise ModelDirError(f"{self.options.model_dir} is not a directory")
        raise ModelDirError(
            f"model directory {self.options.model_dir} does not exist "
            "(pass --wait-for-dir to wait for training to create it)"
        )

    def _check_settings(self) -> None:
        """Warn when this evaluation name's rows were recorded with other settings."""
        assert self.store is not None
        before = self.store.settings(self.model_dir, self.options.name)
        if before is None or before == self._settings:
            return
        differ = {key: {"recorded": before.get(key), "now": self._settings.get(key)}
                  for key in sorted(set(before) | set(self._settings)) if before.get(key) != self._settings.get(key)}
        self.log.warning("this evaluation name was recorded with other settings; new rows will differ "
                         "(give --name to keep evaluations apart)", name=self.options.name, differ=differ)

    def _build(self, task: Any) -> EvalModel:
        from evaluator import models  # build() imports TensorFlow

        log.route_tensorflow_logger()
        batch_size = self.options.batch_size or batch_size_of(task)
        model = models.build(task, device=self.options.device, ema=self.options.ema, ema_name=self.options.ema_name,
                             metrics=self.options.metrics, **({"batch_size": batch_size} if batch_size else {}))
        self.log.info("evaluation model built", **model.describe())
        self._settings = {**self._settings, **measured(model)}
        return model

    def _stop(self) -> None:
        if self.shutdown.requested:
            self.log.info("stopping", signal=self.shutdown.signal_name)
        self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for action in self.actions:
            self._run_action(action, "close", action.close)
        if self.model is not None:
            self.model.close()
        if self.store is not None:
            try:
                self.store.release_claims(self.owner)
            except (DatabaseError, StoreWriteError, TemporaryError) as err:  # they expire by themselves
                self.log.warning("cannot release claims; they expire after the lease", error=str(err))
            self.store.release()
        self.notifier.close()
        self.log.info("stopped")

    def _exit_code(self) -> int:
        """--once: EXIT_INCOMPLETE when something could not be evaluated, so cron and CI notice."""
        if not self.options.once or self.shutdown.requested or self.ending.reason:
            return EXIT_OK
        waiting = [p.checkpoint.name for p in self.backlog.waiting_for_files()]
        problems = {
            "state file unreadable": self._state_problem,
            "failed evaluations": self._failed_this_run or None,
            "listed checkpoints not on disk": waiting[:5] or None,
        }
        problems = {key: value for key, value in problems.items() if value}
        if not problems:
            return EXIT_OK
        self.log.warning("--once done, but not everything was evaluated", exit_code=EXIT_INCOMPLETE, **problems)
        return EXIT_INCOMPLETE

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.shutdown.requested:
            present = self._ensure_watch()
            if present and not self._finishing and self.ending.done_file_seen():
                self._finish("done file found; evaluating what is pending, then stopping")
            if present or (self.options.once and not self.options.wait_for_dir):
                self._busy.set()
                try:
                    self.evaluate_pending()
                finally:
                    self._busy.clear()
                self._say_what_it_waits_for()
                if self._once and self.backlog.next_due_in() is None:
                    if self._finishing:
                        self.ending.reason = f"training wrote {self.options.done_file}; everything pending was evaluated"
                    break
                self.ending.quiet(nothing_pending=len(self.backlog) == 0)
            if self.ending.reason:
                break
            self._idle(present)
        if self.ending.reason and not self.shutdown.requested:
            self.log.info("training is over; stopping", reason=self.ending.reason)

    @property
    def _once(self) -> bool:
        """Evaluate what is pending and stop: --once, or the done file appeared."""
        return self.options.once or self._finishing

    def _finish(self, message: str) -> None:
        self._finishing = True
        self._last_rescan = -math.inf  # look at the whole directory once more first
        self.log.info(message, done_file=self.options.done_file)

    def _say_what_it_waits_for(self) -> None:
        """Once, after the first pass over a directory holding no checkpoint at all: say what would be one."""
        if self._said_waiting or len(self.backlog) or self.backlog.recorded_count() or self._state_problem:
            return
        if os.path.exists(os.path.join(self.model_dir, checkpoints.STATE_FILE)):
            return
        self._said_waiting = True
        assert self.model is not None
        what = "a `checkpoint` state file (tf.train.Checkpoint, CheckpointManager, tf.compat.v1 Saver)"
        if self.model.reads_weight_files:
            what += " or Keras weight files (*.weights.h5, *.keras)"
        self.log.info("no checkpoints yet", waiting_for=what)

    def evaluate_pending(self) -> int:
        """Evaluate every pending checkpoint that is due, oldest step first; returns how many rows."""
        self._wake.clear()  # before reading: a change from now on wakes the next pass
        self._observe()
        if time.monotonic() - self._last_rescan >= self.options.rescan_interval:
            self._rescan()
        absent = [p for p in self.backlog.due() if not checkpoints.exists(p.checkpoint.path)]
        done = self._settle_absent(absent)
        tried = {p.checkpoint.name for p in absent}
        while not self.shutdown.requested and not self.ending.reason:
            pending = self.backlog.first_due(skip=tried)
            if pending is None:
                break
            tried.add(pending.checkpoint.name)
            held = checkpoints.hold(pending.checkpoint.path) if self.actions else {}
            try:
                outcome = self._evaluate_one(pending, held)
            finally:
                checkpoints.release(held)
            if outcome == "stop":
                break
            done += outcome == "recorded"
        return done

    def _evaluate_one(self, pending: Pending, held: dict[str, Any]) -> str:
        """Claim, evaluate, record and act on one checkpoint: "recorded", "skipped" or "stop"."""
        try:
            evaluation = self._attempt(pending)
        except Abandoned:
            self.log.warning("evaluation abandoned for shutdown; it runs again at the next start",
                             checkpoint=pending.checkpoint.name)
            return "stop"
        if evaluation is None:
            return "stop" if self._consecutive_faults else "skipped"  # failing: wait for the backoff
        recorded = self._record(pending, evaluation)
        self.heartbeat.holding.clear()  # type: ignore[union-attr]
        if not recorded:
            return "stop"
        self.ending.recorded(evaluation)
        after = Recorded(evaluation, held, self.model)
        for action in self.actions:
            self._run_action(action, f"act on {evaluation.checkpoint}", lambda a=action: a.after(after))
        return "recorded"

    def _idle(self, present: bool) -> None:
        """Wait for the next wake; the database connection is released once the quiet lasts
        RELEASE_AFTER seconds (within a burst it stays open: reconnecting costs milliseconds)."""
        self.notifier.ping()
        timeout = self.options.rescan_interval if present else min(self.options.rescan_interval, MISSING_DIR_TICK)
        for due_in in (self.backlog.next_due_in(), self.ending.wake_in()):
            if due_in is not None:
                timeout = min(timeout, max(due_in, 0.05))
        if self.notifier.watchdog_interval:
            timeout = min(timeout, self.notifier.watchdog_interval / 2)
        quiet = min(timeout, RELEASE_AFTER)
        if self._wake.wait(quiet) or self.store is None:
            return
        self.store.release()
        self._wake.wait(timeout - quiet)

    def _ensure_watch(self) -> bool:
        """Whether the model directory is there (and watched); logs when that changes."""
        present = self.watcher.ensure() if self.watcher else os.path.isdir(self.model_dir)
        if present != self._present:
            if present:
                if self.watcher:
                    self.log.info("watching", observer=self.watcher.kind)
                else:
                    self.log.info("model directory found")
                self._wake.set()
            else:
                self.log.warning("model directory is missing; waiting for it to appear")
                self.notifier.status(f"waiting for {self.model_dir} to appear")
            self._present = present
        return present

    # -- what is pending --------------------------------------------------------------------

    def _on_change(self) -> None:
        """From the watcher's thread: wake the loop. While it is busy evaluating, also note what the
        state file lists now (rotations meanwhile would hide checkpoints); when it is idle it reads
        the file itself at once, and a second read here would only compete with it."""
        if self._busy.is_set():
            self._observe()
        self._wake.set()

    def _observe(self) -> None:
        """Read the state file and add the listed checkpoints without a row to the backlog."""
        try:
            state = checkpoints.read_state(self.model_dir)
        except StateFileError as err:
            self._state_file_problem(str(err))
            return
        self._state_file_problem(None)
        new, ignored, new_family = self.backlog.observe(state)
        for path in ignored:
            self.log.warning("state file lists a path outside the model directory; ignored", path=path)
        self._log_detected(new, "state file")
        if new_family:  # its checkpoints already on disk (those the state file doesn't list) count too
            self._scan_disk()

    def _on_written(self, prefix: str) -> None:
        """From the watcher's thread: a checkpoint's index appeared. In a family the state file
        lists, it is pending even before (or without) the state file listing it: it gets its row
        even if `max_to_keep` deletes it before any read of the state file, or if the state file
        lists only the newest (`Saver(max_to_keep=0)`)."""
        ckpt = checkpoints.at(self.model_dir, prefix)
        if ckpt is None:
            return
        self._log_detected(self.backlog.found_on_disk([ckpt]), "index written")
        self._wake.set()

    def _rescan(self) -> None:
        """The safety net, every --rescan seconds: rows written by others (or removed by `evaluator
        retry`), and checkpoints on disk that no event or state file reported."""
        assert self.store is not None
        self._last_rescan = time.monotonic()
        if self._last_rescan - self._rows_loaded_at >= self.options.rescan_interval:  # not just loaded at start
            try:
                self.backlog.set_recorded(self.store.recorded(self.model_dir, self.options.name))
                self._rows_loaded_at = self._last_rescan
            except DatabaseError as err:
                self.log.warning("cannot read the database; will try again", error=str(err))
        self._scan_disk()

    def _scan_disk(self) -> None:
        assert self.model is not None
        found = checkpoints.scan(self.model_dir, self.backlog.families, weight_files=self.model.reads_weight_files)
        self._log_detected(self.backlog.found_on_disk(found), "directory scan")

    def _log_detected(self, new: list[Checkpoint], source: str) -> None:
        if new:
            self.ending.activity()
        if len(new) <= DETAIL_LINES:
            for ckpt in new:
                self.log.info("checkpoint detected", checkpoint=ckpt.name, step=ckpt.name_step, source=source)
        else:
            self.log.info("checkpoints detected", count=len(new), first=new[0].name, last=new[-1].name,
                          source=source)

    def _state_file_problem(self, problem: str | None) -> None:
        with self._lock:
            changed, self._state_problem = problem != self._state_problem, problem
        if changed and problem:
            self.log.warning("state file unreadable; waiting for a valid one", error=problem)
        elif changed:
            self.log.info("state file readable again")

    def _settle_absent(self, absent: list[Pending]) -> int:
        """Record the absent checkpoints that count as missing, in one transaction; the others wait
        for their files. Returns how many rows were written."""
        missing = [p for p in absent if self.backlog.is_missing(p, once=self._once)]
        if not self._once:
            decided = {p.checkpoint.name for p in missing}
            for pending in absent:
                if pending.checkpoint.name not in decided:
                    self.backlog.defer(pending, min(self.options.rescan_interval, max(0.2, self.backlog.grace / 4)))
        if not missing:
            return 0
        now = utcnow()
        rows = [replace(self._base(p, "", now), status=Status.MISSING, error=self._missing_reason(p), started_at=None)
                for p in missing]
        inserted = self._write("record missing checkpoints", lambda: self.store.record_many(rows),  # type: ignore[union-attr]
                               checkpoint=missing[0].checkpoint.name)
        if inserted is None:
            return 0
        for pending in missing:
            self.backlog.done(pending, None)
        if len(rows) <= 3:
            for row in rows:
                self._log_evaluation(row)
        else:
            self.log.warning("checkpoints missing", count=len(rows), first=rows[0].checkpoint,
                             last=rows[-1].checkpoint, status=Status.MISSING.value, error=rows[0].error)
        self.notifier.status(self._status_line())
        return inserted

    def _missing_reason(self, pending: Pending) -> str:
        if pending.seen_on_disk:
            return f"{pending.checkpoint.name} was deleted before it could be read (training's max_to_keep?)"
        return (f"{pending.checkpoint.name} is listed in the state file but never appeared on disk "
                + ("while newer checkpoints did" if self._once
                   else f"within {self.backlog.grace:g} s while newer checkpoints did"))

    # -- one checkpoint ---------------------------------------------------------------------

    def _base(self, pending: Pending, fingerprint: str, started_at: Any) -> Evaluation:
        ckpt = pending.checkpoint
        return Evaluation(model_dir=self.model_dir, checkpoint=ckpt.name, step=ckpt.name_step,
                          status=Status.FAILED, evaluated_at=started_at, name=self.options.name,
                          fingerprint=fingerprint, settings=self._settings,
                          device=self.model.device if self.model else None,
                          detected_at=pending.detected_at, started_at=started_at)

    def _attempt(self, pending: Pending) -> Evaluation | None:
        """Claim and evaluate one checkpoint on disk; None when it stays pending (claimed by another
        evaluator, recorded meanwhile, a short read or a fault to retry)."""
        assert self.store is not None and self.heartbeat is not None
        ckpt = pending.checkpoint
        fingerprint = checkpoints.fingerprint(ckpt.path)
        if fingerprint is None:
            return None  # deleted since the look: the next pass records it missing
        self.backlog.saw_on_disk(pending)
        key = CheckpointKey(self.model_dir, self.options.name, ckpt.name, fingerprint)
        claim = self._write("claim the checkpoint",
                            lambda: self.store.claim(key, self.owner, self.options.lease),  # type: ignore[union-attr]
                            checkpoint=ckpt.name)
        if claim is None:
            self.log.warning("stopping while the database refuses writes; the checkpoint runs again at the next "
                             "start", checkpoint=ckpt.name)
            return None
        if claim is Claim.RECORDED:
            self.backlog.done(pending, fingerprint)
            return None
        if claim is Claim.HELD and not self._take_over_from_the_dead(key):
            self.log.debug("claimed by another evaluator", checkpoint=ckpt.name)
            self.backlog.defer(pending, min(self.options.lease / 3, 5.0))
            return None
        self.heartbeat.holding.set()  # until the row is written (the loop clears it)
        try:
            evaluation = self._evaluate(pending, fingerprint)
            after = checkpoints.fingerprint(ckpt.path)
            if after is not None and after != fingerprint:  # still being written while we read it
                raise CheckpointIncomplete(f"{ckpt.name} changed while it was evaluated")
            return evaluation
        except (CheckpointIncomplete, EvaluationFault, Abandoned) as err:
            self.heartbeat.holding.clear()
            self._write("release the claim", lambda: self.store.release_claims(self.owner, key),  # type: ignore[union-attr]
                        checkpoint=ckpt.name)
            if isinstance(err, Abandoned):
                raise
            if isinstance(err, CheckpointIncomplete):
                if self._retry_short_read(pending, err):
                    return None
                return replace(self._base(pending, fingerprint, utcnow()), error=str(err))
            return self._fault(pending, fingerprint, err)

    def _take_over_from_the_dead(self, key: CheckpointKey) -> bool:
        """Take a claim whose holder was a process on this host that is gone (`kill -9`, then a
        restart): no need to wait for its lease to expire."""
        assert self.store is not None
        holder = self._write("read the claim", lambda: self.store.holder(key), checkpoint=key.checkpoint)  # type: ignore[union-attr]
        if not holder or not died_here(holder):
            return False
        taken = self._write("take over the claim",
                            lambda: self.store.take_over(key, holder, self.owner, self.options.lease),  # type: ignore[union-attr]
                            checkpoint=key.checkpoint)
        if taken:
            self.log.info("took over the claim of an evaluator that died on this host", checkpoint=key.checkpoint,
                          dead=holder)
        return bool(taken)

    def _evaluate(self, pending: Pending, fingerprint: str) -> Evaluation:
        """Restore and validate one checkpoint: its row (ok, failed, missing). Raises
        CheckpointIncomplete, EvaluationFault and Abandoned for the caller to decide."""
        assert self.model is not None
        ckpt = pending.checkpoint
        self.notifier.status(f"evaluating {ckpt.name} ({len(self.backlog)} pending)")
        base = self._base(pending, fingerprint, utcnow())
        try:
            outcome = self.model.evaluate(ckpt, progress=self._progress)
        except (CheckpointIncomplete, EvaluationFault):
            raise
        except CheckpointMissing as err:
            return replace(base, status=Status.MISSING, error=str(err), evaluated_at=utcnow())
        except CheckpointError as err:
            return replace(base, error=str(err), evaluated_at=utcnow())
        except Exception as err:  # anything else is not known to be the checkpoint's doing
            raise EvaluationFault(f"{type(err).__name__}: {first_line(err)}") from err
        metrics = outcome.metrics
        self._consecutive_faults = 0
        for warning in outcome.warnings:
            self.log.warning(warning, checkpoint=ckpt.name)
        return replace(base, status=Status.OK, step=outcome.step, accuracy=metrics.accuracy,
                       loss=metrics.loss, examples=metrics.examples, metrics=metrics.stored(), goals=metrics.goals,
                       ema_source=outcome.ema_source,
                       restore_seconds=outcome.restore_seconds, eval_seconds=metrics.seconds,
                       evaluated_at=utcnow())

    def _retry_short_read(self, pending: Pending, err: CheckpointIncomplete) -> bool:
        """Whether to try a short read again: while the checkpoint's files are still changing."""
        files = checkpoints.snapshot(pending.checkpoint.path)
        newest = max((mtime for _, _, mtime in files), default=0) / 1e9
        growing = files != pending.files or time.time() - newest < SETTLE_SECONDS
        pending.files = files
        pending.short_reads += 1
        if not growing or pending.short_reads >= MAX_SHORT_READS:
            return False
        delay = min(0.5 * 2 ** (pending.short_reads - 1), 8.0)
        self.log.info("checkpoint read came up short; still being written? will retry",
                      checkpoint=pending.checkpoint.name, error=str(err), retry_in=delay, tries=pending.short_reads)
        self.backlog.defer(pending, delay)
        return True

    def _fault(self, pending: Pending, fingerprint: str, err: EvaluationFault) -> Evaluation | None:
        """A fault that is not the checkpoint's: retry with backoff; give up on the daemon after
        --retries in a row, or on this checkpoint alone after --retries while others succeeded."""
        self._consecutive_faults += 1
        pending.faults += 1
        tries, limit = self._consecutive_faults, self.options.retries
        if tries >= limit:
            raise FaultsExhausted(
                f"evaluating failed {tries} times in a row for a reason that is not the checkpoints' own: "
                f"{err}. Fix the task or its environment; the checkpoints stay pending"
            )
        if pending.faults >= limit:  # other checkpoints succeeded meanwhile: it is this one's
            self._consecutive_faults = 0
            return replace(self._base(pending, fingerprint, utcnow()), error=str(err))
        delay = min(self.options.retry_delay * 2 ** (tries - 1), MAX_RETRY_DELAY)
        self.log.warning("evaluation failed, not for the checkpoint's sake; will retry",
                         checkpoint=pending.checkpoint.name, error=str(err), retry_in=delay, tries=tries, limit=limit)
        self.notifier.status(f"evaluation failing, retry in {delay:g} s: {err}")
        self.backlog.defer(pending, delay)
        return None

    def _progress(self, examples: int) -> None:
        """After each validation batch: the loop is alive; give up if shutdown's grace is over."""
        self.notifier.ping()
        self.shutdown.check()

    def _record(self, pending: Pending, evaluation: Evaluation) -> bool:
        """Write the row (dropping our claim), retrying while the database refuses; False when
        shutdown came first (no row: the checkpoint runs again at the next start)."""
        inserted = self._write("record the evaluation",
                               lambda: self.store.record(evaluation, self.owner),  # type: ignore[union-attr]
                               checkpoint=evaluation.checkpoint)
        if inserted is None:
            self.log.error("stopping with an unrecorded result; the checkpoint runs again at the next start",
                           checkpoint=evaluation.checkpoint)
            return False
        self.backlog.done(pending, evaluation.fingerprint)
        if inserted:
            if evaluation.status is Status.OK:
                self._last = evaluation
            elif evaluation.status is Status.FAILED:
                self._failed_this_run += 1
            self._log_evaluation(evaluation)
        else:
            self.log.warning("already recorded by another evaluator; kept that row", checkpoint=evaluation.checkpoint)
        self.notifier.status(self._status_line())
        return True

    def _write(self, what: str, write: Any, **fields: Any) -> Any:
        """Run a database write, retrying with backoff while it fails for a reason that may pass
        (disk full, read-only, locked); None when shutdown came first."""
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

    def _log_evaluation(self, e: Evaluation) -> None:
        fields: dict[str, Any] = {"step": e.step, "checkpoint": e.checkpoint, "status": e.status.value}
        if e.status is Status.OK:
            fields.update(flat_metrics(e.metrics or {}))
            if len(e.metrics or {}) < 2:
                fields["examples"] = e.examples
            fields.update(ema=e.ema_source, restore_seconds=round(e.restore_seconds or 0.0, 4),
                          eval_seconds=round(e.eval_seconds or 0.0, 4), device=e.device)
            self.log.info("evaluated", **fields)
        else:
            self.log.warning("evaluated", error=e.error, **fields)

    def _status_line(self) -> str:
        last = self._last
        if last is None or last.accuracy is None:
            return f"watching {self.model_dir}"
        return f"watching {self.model_dir}, last step {last.step} acc {last.accuracy:.4f}"


def flat_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Every metric as one field: `accuracy` with one validation set, `<set>/accuracy` with several."""
    one = len(metrics) == 1
    return {(name if one else f"{dataset}/{name}"): round(value, 6) if isinstance(value, float) else value
            for dataset, values in metrics.items() for name, value in values.items()
            if not (one and name == EXAMPLES)}


def measured(model: EvalModel) -> dict[str, Any]:
    """The settings a model adds when it measures more than the defaults (metrics, named sets)."""
    from evaluator.metrics import DEFAULTS

    extra: dict[str, Any] = {}
    if list(model.suite.goals) != list(DEFAULTS[model.sets.problem]):
        extra["metrics"] = list(model.suite.goals)
    if model.sets.named:
        extra["validation_sets"] = model.sets.names
    return extra
