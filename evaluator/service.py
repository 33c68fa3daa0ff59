"""The daemon: start-up, the loop that evaluates every checkpoint exactly once, shutdown.

    wake (state-file event, an `.index` written, re-scan tick, start-up)
      -> pending = checkpoints seen (state file, files on disk) without a row, per run   (runs.py)
      -> one checkpoint of each run in turn, oldest (or --order newest) step first: claim ->
         restore (EMA) -> validate -> record one row (and drop the claim) -> log, STATUS -> actions
      -> wait for the next wake

One process serves one or several model directories (runs) with one evaluation model; several
processes, on one or several machines, share the work through the database's claims.

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
from evaluator.actions.setup import build_actions, check_actions
from evaluator.backlog import Pending, utcnow
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
    ConfigError,
    ModelDirError,
    StoreWriteError,
    TemporaryError,
    first_line,
)
from evaluator.evaluation import EXAMPLES, CheckpointKey, Evaluation, Status
from evaluator.notify import Notifier
from evaluator.options import WatchOptions
from evaluator.runs import Run, discover
from evaluator.shutdown import Shutdown
from evaluator.store import Claim, Store, describe
from evaluator.task import batch_size_of, load_task

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


class Service:
    """One evaluation model, one database, one or several model directories: `evaluator watch`."""

    def __init__(self, options: WatchOptions, notifier: Notifier | None = None) -> None:
        self.options = options
        self.directories = [checkpoints.normalize_model_dir(d) for d in options.directories]
        self.roots = [checkpoints.normalize_model_dir(r) for r in options.roots]
        #: One model directory named, no --root: logs carry it on every line, as they always did.
        self.single = len(self.directories) == 1 and not self.roots
        self.log = log.get(model_dir=self.directories[0]) if self.single else log.get()
        self.notifier = notifier or Notifier()
        self.shutdown = Shutdown(options.stop_grace)
        self.store: Store | None = None
        self.model: EvalModel | None = None
        self.heartbeat: Heartbeat | None = None
        self.runs: dict[str, Run] = {}
        self.owner = owner_id()
        self._settings = options.settings()
        self._wake = threading.Event()
        #: Set while a pass of the loop runs (a watcher then reads the state file itself).
        self._busy = threading.Event()
        self._last: Evaluation | None = None
        self._last_rescan = -math.inf
        self._consecutive_faults = 0
        self._failed_this_run = 0
        self._turn = 0
        self._action_errors: dict[str, str] = {}
        done_file = os.path.join(self.directories[0], options.done_file) if options.done_file and self.single else None
        self.ending = Ending(options.until_step, options.idle_timeout, done_file)
        #: Set when the done file appeared: evaluate what is pending, then stop (like --once).
        self._finishing = False

    # -- the whole run ----------------------------------------------------------------------

    def run(self, *, own_process: bool = False) -> int:
        """Start, evaluate until stopped (or once), stop; returns the exit status. Raises ConfigError
        for what can't work, TemporaryError for what may work after a restart. `own_process`: the
        process ends with the service, so signals stay handled until it exits."""
        with self.shutdown.handling_signals(on_signal=self._wake.set, until_exit=own_process):
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
        self._check_directories()
        Store.check_durable(self.options.db_url)
        where = {} if self.single else {"model_dirs": self.directories, "roots": self.roots}
        self.log.info("starting", task=self.options.task, db=describe(self.options.db_url),
                      name=self.options.name, device=self.options.device, ema=self.options.ema,
                      mode="once" if self.options.once else ("poll" if self.options.poll else "events"), **where)
        log.quiet_tensorflow()
        self.model = self._build(load_task(self.options.task))
        check_actions(self.options, self.model, several=not self.single)
        self.store = Store.prepare(self.options.db_url, wait=self.options.db_wait, on_retry=self._db_retry)
        self.heartbeat = Heartbeat(self.store, self.owner, self.options.lease)
        for directory in self.directories:
            self._add_run(directory)
        self._discover()
        self.log.info("database ready", db=describe(self.options.db_url), revision=self.store.revision(),
                      recorded=sum(run.backlog.recorded_count() for run in self.runs.values()))
        self.heartbeat.start()
        self.notifier.ready(self._status_line())

    def _check_directories(self) -> None:
        if not self.single and (self.options.until_step is not None or self.options.done_file):
            raise ConfigError("--until-step and --done-file end the watch of one model directory; with several "
                              "(or --root), use --idle-timeout")
        for given, directory in [*zip(self.options.directories, self.directories), *zip(self.options.roots, self.roots)]:
            try:
                directory.encode("utf-8")
            except UnicodeEncodeError:
                raise ModelDirError(
                    f"model directory {directory!r} is not valid UTF-8: rows name it as text; rename it") from None
            if os.path.isdir(directory) or self.options.wait_for_dir:
                continue
            if os.path.exists(directory):
                raise ModelDirError(f"{given} is not a directory")
            raise ModelDirError(f"model directory {given} does not exist "
                                "(pass --wait-for-dir to wait for training to create it)")

    def _add_run(self, directory: str) -> Run:
        """Start serving a model directory: its rows, its actions (caught up), its watcher."""
        assert self.store is not None and self.model is not None and self.heartbeat is not None
        run = Run(directory, grace=self.options.missing_grace, name=self.options.name,
                  weight_files=self.model.reads_weight_files, on_new=self.ending.activity)
        run.load_rows(self.store)
        self._check_settings(run)
        if not self.single:
            run.log.info("serving this model directory", recorded=run.backlog.recorded_count())
        run.actions = build_actions(self.options, directory, self.model, run.log, several=not self.single)
        self._catch_up(run)
        if not self.options.once:
            run.watch(self._wake.set, self._busy, poll=self.options.poll, poll_interval=self.options.poll_interval)
        self.runs[directory] = run
        self.heartbeat.watching(list(self.runs))
        return run

    def _discover(self) -> None:
        """--root: serve each run that appeared below a root; forget those that are gone."""
        if not self.roots:
            return
        assert self.model is not None and self.heartbeat is not None
        found = {d for root in self.roots for d in discover(root, self.options.depth, self.model.reads_weight_files)}
        for directory in sorted(found - set(self.runs)):
            try:
                self._add_run(directory)
            except StoreWriteError as err:  # the database is away: the next tick tries again
                self.log.warning("cannot read a new run's rows; will try again", model_dir=directory, error=str(err))
        for directory in sorted(set(self.runs) - found - set(self.directories)):
            if not os.path.isdir(directory):
                self.runs.pop(directory).stop()
                self.log.info("model directory gone; no longer served", model_dir=directory)
                self.heartbeat.watching(list(self.runs))

    def _catch_up(self, run: Run) -> None:
        """Each action does what the rows already recorded call for and it has not done."""
        assert self.store is not None
        if not run.actions:
            return
        rows = list(self.store.ok_rows(run.model_dir, self.options.name))
        for action in run.actions:
            self._run_action(run, action, "catch up", lambda a=action: a.catch_up(rows))

    def _run_action(self, run: Run, action: Action, what: str, call: Any) -> None:
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

    def _db_retry(self, reason: str, delay: float) -> None:
        self.log.warning("database unavailable at start; retrying", error=reason, retry_in=delay)
        self.notifier.status(f"waiting for the database: {reason}")

    def _check_settings(self, run: Run) -> None:
        """Warn when this evaluation name's rows were recorded with other settings."""
        assert self.store is not None
        before = self.store.settings(run.model_dir, self.options.name)
        if before is None or before == self._settings:
            return
        differ = {key: {"recorded": before.get(key), "now": self._settings.get(key)}
                  for key in sorted(set(before) | set(self._settings)) if before.get(key) != self._settings.get(key)}
        run.log.warning("this evaluation name was recorded with other settings; new rows will differ "
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
        for run in self.runs.values():
            run.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for run in self.runs.values():
            for action in run.actions:
                self._run_action(run, action, "close", action.close)
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
        waiting = [p.checkpoint.name for run in self.runs.values() for p in run.backlog.waiting_for_files()]
        unreadable = [run.state_problem for run in self.runs.values() if run.state_problem]
        problems = {
            "state file unreadable": "; ".join(unreadable) or None,
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
            self.store.check_identity()  # type: ignore[union-attr]  # deleted while idle too: exit 75 now
            present = self._ensure_watch()
            if present and not self._finishing and self.ending.done_file_seen():
                self._finish("done file found; evaluating what is pending, then stopping")
            if present or (self.options.once and not self.options.wait_for_dir):
                self._busy.set()
                try:
                    self.evaluate_pending()
                finally:
                    self._busy.clear()
                for run in self.runs.values():
                    run.say_what_it_waits_for()
                if self._once and all(run.backlog.next_due_in() is None for run in self.runs.values()):
                    if self._finishing:
                        self.ending.reason = f"training wrote {self.options.done_file}; everything pending was evaluated"
                    break
            # A model directory that is gone brings nothing new either: --idle-timeout counts on.
            self.ending.quiet(nothing_pending=not present or all(len(run.backlog) == 0 for run in self.runs.values()))
            if self.ending.reason:
                break
            self._idle(present)
        if self.ending.reason and not self.shutdown.requested:
            self.log.info("training is over; stopping", reason=self.ending.reason)
            if self.ending.reached_step:
                self._say_what_is_left()

    def _say_what_is_left(self) -> None:
        """--until-step: name the checkpoints seen but not evaluated (past the target, or not yet
        tried), so a user does not mistake their missing rows for a fault."""
        for run in self.runs.values():
            left = run.backlog.all()
            if left:
                run.log.warning("checkpoints left without a row at --until-step", count=len(left),
                                first=left[0].checkpoint.name, last=left[-1].checkpoint.name,
                                until_step=self.options.until_step)

    @property
    def _once(self) -> bool:
        """Evaluate what is pending and stop: --once, or the done file appeared."""
        return self.options.once or self._finishing

    def _finish(self, message: str) -> None:
        self._finishing = True
        self._last_rescan = -math.inf  # look at the whole directory once more first
        self.log.info(message, done_file=self.options.done_file)

    def evaluate_pending(self) -> int:
        """Evaluate every pending checkpoint that is due, one of each run in turn; returns how many rows."""
        self._wake.clear()  # before reading: a change from now on wakes the next pass
        rescan = time.monotonic() - self._last_rescan >= self.options.rescan_interval
        if rescan:
            self._last_rescan = time.monotonic()
            self._discover()
        done = 0
        tried: dict[str, set[str]] = {}
        for run in list(self.runs.values()):
            run.observe()
            if rescan:
                assert self.store is not None
                run.rescan(self.store, self.options.rescan_interval)
            absent = [p for p in run.backlog.due() if not checkpoints.exists(p.checkpoint.path)]
            done += self._settle_absent(run, absent)
            tried[run.model_dir] = {p.checkpoint.name for p in absent}
        newest = self.options.order == "newest"
        while not self.shutdown.requested and not self.ending.reason:
            progressed = False
            for run in self._in_turn():
                pending = run.backlog.first_due(skip=tried.setdefault(run.model_dir, set()), newest=newest)
                if pending is None:
                    continue
                progressed = True
                tried[run.model_dir].add(pending.checkpoint.name)
                held = checkpoints.hold(pending.checkpoint.path) if run.actions else {}
                try:
                    outcome = self._evaluate_one(run, pending, held)
                finally:
                    checkpoints.release(held)
                if outcome == "stop":
                    return done
                done += outcome == "recorded"
                if self.shutdown.requested or self.ending.reason:
                    break
            if not progressed:
                break
        return done

    def _in_turn(self) -> list[Run]:
        """The runs, starting one further each round: a busy run does not starve the others."""
        runs = list(self.runs.values())
        if not runs:
            return runs
        self._turn = (self._turn + 1) % len(runs)
        return runs[self._turn:] + runs[:self._turn]

    def _evaluate_one(self, run: Run, pending: Pending, held: dict[str, Any]) -> str:
        """Claim, evaluate, record and act on one checkpoint: "recorded", "skipped" or "stop"."""
        try:
            evaluation = self._attempt(run, pending)
        except Abandoned:
            run.log.warning("evaluation abandoned for shutdown; it runs again at the next start",
                            checkpoint=pending.checkpoint.name)
            return "stop"
        if evaluation is None:
            return "stop" if self._consecutive_faults else "skipped"  # failing: wait for the backoff
        recorded = self._record(run, pending, evaluation)
        self.heartbeat.holding.clear()  # type: ignore[union-attr]
        self.heartbeat.evaluating(None)  # type: ignore[union-attr]
        if not recorded:
            return "stop"
        self.ending.recorded(evaluation)
        after = Recorded(evaluation, held, self.model)
        for action in run.actions:
            self._run_action(run, action, f"act on {evaluation.checkpoint}", lambda a=action: a.after(after))
        return "recorded"

    def _idle(self, present: bool) -> None:
        """Wait for the next wake; the database connection is released once the quiet lasts
        RELEASE_AFTER seconds (within a burst it stays open: reconnecting costs milliseconds)."""
        self.notifier.ping()
        timeout = self.options.rescan_interval if present else min(self.options.rescan_interval, MISSING_DIR_TICK)
        waits = [run.backlog.next_due_in() for run in self.runs.values()] + [self.ending.wake_in()]
        for due_in in waits:
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
        """Whether a model directory is there to evaluate (with --root: always, runs come and go)."""
        present = False
        for run in self.runs.values():
            there, appeared = run.ensure_watch(self.notifier)
            present = present or there
            if appeared:
                self.ending.activity()  # the idle clock starts when training created the directory
                self._wake.set()
        if self.roots and self.ending.last_activity is None:
            self.ending.activity()  # runs below a root come and go: the clock starts with the process
        return present or bool(self.roots)

    # -- what is missing --------------------------------------------------------------------

    def _settle_absent(self, run: Run, absent: list[Pending]) -> int:
        """Record the absent checkpoints that count as missing, in one transaction; the others wait
        for their files. Returns how many rows were written."""
        missing = [p for p in absent if run.backlog.is_missing(p, once=self._once)]
        if not self._once:
            decided = {p.checkpoint.name for p in missing}
            for pending in absent:
                if pending.checkpoint.name not in decided:
                    run.backlog.defer(pending, min(self.options.rescan_interval, max(0.2, run.backlog.grace / 4)))
        if not missing:
            return 0
        now = utcnow()
        rows = [replace(self._base(run, p, "", now), status=Status.MISSING, error=self._missing_reason(run, p),
                        started_at=None) for p in missing]
        written = self._write("record missing checkpoints", lambda: self.store.record_new(rows),  # type: ignore[union-attr]
                              checkpoint=missing[0].checkpoint.name)
        if written is None:
            return 0
        for pending in missing:
            run.backlog.done(pending, None)
        if len(written) < len(rows):  # the others have a row already: another evaluator's, said by its log
            run.log.debug("already recorded by another evaluator", count=len(rows) - len(written))
        if len(written) <= 3:
            for row in written:
                self._log_evaluation(run, row)
        else:
            run.log.warning("checkpoints missing", count=len(written), first=written[0].checkpoint,
                            last=written[-1].checkpoint, status=Status.MISSING.value, error=written[0].error)
        self.notifier.status(self._status_line())
        return len(written)

    def _missing_reason(self, run: Run, pending: Pending) -> str:
        if pending.seen_on_disk:
            return f"{pending.checkpoint.name} was deleted before it could be read (training's max_to_keep?)"
        return (f"{pending.checkpoint.name} is listed in the state file but never appeared on disk "
                + ("while newer checkpoints did" if self._once
                   else f"within {run.backlog.grace:g} s while newer checkpoints did"))

    # -- one checkpoint ---------------------------------------------------------------------

    def _base(self, run: Run, pending: Pending, fingerprint: str, started_at: Any) -> Evaluation:
        ckpt = pending.checkpoint
        return Evaluation(model_dir=run.model_dir, checkpoint=ckpt.name, step=ckpt.name_step,
                          status=Status.FAILED, evaluated_at=started_at, name=self.options.name,
                          fingerprint=fingerprint, settings=self._settings,
                          device=self.model.device if self.model else None,
                          detected_at=pending.detected_at, started_at=started_at)

    def _attempt(self, run: Run, pending: Pending) -> Evaluation | None:
        """Claim and evaluate one checkpoint on disk; None when it stays pending (claimed by another
        evaluator, recorded meanwhile, a short read or a fault to retry)."""
        assert self.store is not None and self.heartbeat is not None
        ckpt = pending.checkpoint
        fingerprint = checkpoints.fingerprint(ckpt.path)
        if fingerprint is None:
            return None  # deleted since the look: the next pass records it missing
        run.backlog.saw_on_disk(pending)
        key = CheckpointKey(run.model_dir, self.options.name, ckpt.name, fingerprint)
        claim = self._write("claim the checkpoint",
                            lambda: self.store.claim(key, self.owner, self.options.lease),  # type: ignore[union-attr]
                            checkpoint=ckpt.name)
        if claim is None:
            run.log.warning("stopping while the database refuses writes; the checkpoint runs again at the next "
                            "start", checkpoint=ckpt.name)
            return None
        if claim is Claim.RECORDED:
            run.backlog.done(pending, fingerprint)
            return None
        if claim is Claim.HELD and not self._take_over_from_the_dead(run, key):
            run.log.debug("claimed by another evaluator", checkpoint=ckpt.name)
            run.backlog.defer(pending, min(self.options.lease / 3, 5.0))
            return None
        self.heartbeat.holding.set()  # until the row is written (the loop clears it)
        self.heartbeat.evaluating(ckpt.path)
        try:
            evaluation = self._evaluate(run, pending, fingerprint)
            after = checkpoints.fingerprint(ckpt.path)
            if after is not None and after != fingerprint:  # still being written while we read it
                raise CheckpointIncomplete(f"{ckpt.name} changed while it was evaluated")
            return evaluation
        except (CheckpointIncomplete, EvaluationFault, Abandoned) as err:
            self.heartbeat.holding.clear()
            self.heartbeat.evaluating(None)
            self._write("release the claim", lambda: self.store.release_claims(self.owner, key),  # type: ignore[union-attr]
                        checkpoint=ckpt.name)
            if isinstance(err, Abandoned):
                raise
            if isinstance(err, CheckpointIncomplete):
                if self._retry_short_read(run, pending, err):
                    return None
                return replace(self._base(run, pending, fingerprint, utcnow()), error=str(err))
            return self._fault(run, pending, fingerprint, err)

    def _take_over_from_the_dead(self, run: Run, key: CheckpointKey) -> bool:
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
            run.log.info("took over the claim of an evaluator that died on this host", checkpoint=key.checkpoint,
                         dead=holder)
        return bool(taken)

    def _evaluate(self, run: Run, pending: Pending, fingerprint: str) -> Evaluation:
        """Restore and validate one checkpoint: its row (ok, failed, missing). Raises
        CheckpointIncomplete, EvaluationFault and Abandoned for the caller to decide."""
        assert self.model is not None
        ckpt = pending.checkpoint
        self.notifier.status(f"evaluating {ckpt.name} ({len(run.backlog)} pending)")
        run.log.debug("evaluation started", checkpoint=ckpt.name, owner=self.owner)
        base = self._base(run, pending, fingerprint, utcnow())
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
            run.log.warning(warning, checkpoint=ckpt.name)
        return replace(base, status=Status.OK, step=outcome.step, accuracy=metrics.accuracy,
                       loss=metrics.loss, examples=metrics.examples, metrics=metrics.stored(), goals=metrics.goals,
                       ema_source=outcome.ema_source,
                       restore_seconds=outcome.restore_seconds, eval_seconds=metrics.seconds,
                       evaluated_at=utcnow())

    def _retry_short_read(self, run: Run, pending: Pending, err: CheckpointIncomplete) -> bool:
        """Whether to try a short read again: while the checkpoint's files are still changing."""
        files = checkpoints.snapshot(pending.checkpoint.path)
        newest = max((mtime for _, _, mtime in files), default=0) / 1e9
        growing = files != pending.files or time.time() - newest < SETTLE_SECONDS
        pending.files = files
        pending.short_reads += 1
        if not growing or pending.short_reads >= MAX_SHORT_READS:
            return False
        delay = min(0.5 * 2 ** (pending.short_reads - 1), 8.0)
        run.log.info("checkpoint read came up short; still being written? will retry",
                     checkpoint=pending.checkpoint.name, error=str(err), retry_in=delay, tries=pending.short_reads)
        run.backlog.defer(pending, delay)
        return True

    def _fault(self, run: Run, pending: Pending, fingerprint: str, err: EvaluationFault) -> Evaluation | None:
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

    def _record(self, run: Run, pending: Pending, evaluation: Evaluation) -> bool:
        """Write the row (dropping our claim), retrying while the database refuses; False when
        shutdown came first (no row: the checkpoint runs again at the next start)."""
        inserted = self._write("record the evaluation",
                               lambda: self.store.record(evaluation, self.owner),  # type: ignore[union-attr]
                               checkpoint=evaluation.checkpoint)
        if inserted is None:
            run.log.error("stopping with an unrecorded result; the checkpoint runs again at the next start",
                          checkpoint=evaluation.checkpoint)
            return False
        run.backlog.done(pending, evaluation.fingerprint)
        if inserted:
            if evaluation.status is Status.OK:
                self._last = run.last = evaluation
            elif evaluation.status is Status.FAILED:
                self._failed_this_run += 1
            self._log_evaluation(run, evaluation)
        else:
            run.log.warning("already recorded by another evaluator; kept that row", checkpoint=evaluation.checkpoint)
        self.notifier.status(self._status_line())
        return True

    def _write(self, what: str, write: Any, **fields: Any) -> Any:
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

    def _status_line(self) -> str:
        where = self.directories[0] if self.single else f"{len(self.runs)} model directories"
        last = self._last
        if last is None or last.accuracy is None:
            return f"watching {where}"
        return f"watching {where}, last step {last.step} acc {last.accuracy:.4f}"


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
