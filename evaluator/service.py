"""The daemon: its lifecycle and its loop: start, wake, evaluate what is due, sleep, stop, exit code.

    wake (state-file event, an `.index` written, re-scan tick, start-up)
      -> pending = checkpoints seen (state file, files on disk) without a row, per run   (runs.py)
      -> a batch of each run in turn (one checkpoint while they come one at a time), oldest (or
         --order newest) step first: what happens to each is attempt.py's
      -> wait for the next wake

One process serves one or several model directories (runs) with one evaluation model; several
processes, on one or several machines, share the work through the database's claims.

The watcher only reads the state file and wakes the loop; what is pending is derived from what
was seen and from the database, never from events alone, so a missed event delays a checkpoint
(until the next tick) and a restart resumes exactly where the rows end.
"""
from __future__ import annotations

import gc
import math
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from evaluator import checkpoints, log
from evaluator.actions.setup import build_actions, check_actions
from evaluator.attempt import Attempts
from evaluator.claims import Heartbeat, owner_id
from evaluator.ending import Ending
from evaluator.errors import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    ConfigError,
    DatabaseError,
    Interrupted,
    ModelDirError,
    SourceUnavailable,
    StateFileError,
    StoreWriteError,
    TemporaryError,
)
from evaluator.notify import Notifier
from evaluator.options import WatchOptions
from evaluator.runs import Run, say_pinned
from evaluator.sources import Source, discover, is_remote, normalize, open_source, watch_root
from evaluator.sources.pins import Pins
from evaluator.shutdown import Shutdown
from evaluator.store import Store, describe
from evaluator.task import batch_size_of, load_task

if TYPE_CHECKING:  # pragma: no cover - typing only
    from evaluator.models import EvalModel

#: How often to look for the model directory while it is missing.
MISSING_DIR_TICK = 1.0
#: Seconds of quiet after which the database connection is released (files not held open).
RELEASE_AFTER = 2.0


class Service:
    """One evaluation model, one database, one or several model directories: `evaluator watch`."""

    def __init__(self, options: WatchOptions, notifier: Notifier | None = None) -> None:
        self.options = options
        self.directories = [normalize(d) for d in options.directories]
        self.roots = [normalize(r) for r in options.roots]
        #: One model directory named, no --root: logs carry it on every line, as they always did.
        self.single = len(self.directories) == 1 and not self.roots
        self.log = log.get(model_dir=self.directories[0]) if self.single else log.get()
        self.notifier = notifier or Notifier()
        self.shutdown = Shutdown(options.stop_grace)
        self.store: Store | None = None
        self.model: EvalModel | None = None
        self.heartbeat: Heartbeat | None = None
        #: What happens to each checkpoint (attempt.py), once the model and the store are there.
        self.attempts: Attempts | None = None
        self.runs: dict[str, Run] = {}
        self.owner = owner_id()
        self._settings = options.settings()
        self._wake = threading.Event()
        #: Set while a pass of the loop runs (a watcher then reads the state file itself).
        self._busy = threading.Event()
        self._last_rescan = -math.inf
        self._turn = 0
        #: --root: a watcher per root (new runs), and whether one reported something to look at.
        self._root_watchers: dict[str, Any] = {}
        #: Model directories watched (and pinned) before the model was built: their runs take them.
        self._early_sources: dict[str, Source] = {}
        self._discover_now = threading.Event()
        done_file = os.path.join(self.directories[0], options.done_file) if options.done_file and self.single else None
        self.ending = Ending(options.until_step, options.idle_timeout, done_file)
        #: Set when the done file appeared: evaluate what is pending, then stop (like --once).
        self._finishing = False

    # -- the whole run ----------------------------------------------------------------------

    def run(self, *, own_process: bool = False) -> int:
        """Start, evaluate until stopped (or once), stop; returns the exit status. Raises ConfigError
        for what can't work, TemporaryError for what may work after a restart. `own_process`: the
        process ends with the service, so signals stay handled until it exits."""
        if own_process:
            # The watcher's thread pins a checkpoint the moment its index appears, racing training's
            # max_to_keep (a trainer saving every step deletes each ~20 ms later): it gets the GIL
            # within 1 ms of asking, not Python's default 5.
            sys.setswitchinterval(0.001)
        with self.shutdown.handling_signals(on_signal=self._wake.set, until_exit=own_process):
            try:
                self._start()
                if own_process:
                    # What start-up made (TensorFlow, the graph, the task's data: ~10^5 objects) lives
                    # as long as the process: out of the collector's sight, a full collection stops
                    # costing ~0.1 s, which a backlog of small checkpoints paid several times.
                    gc.freeze()
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
                      name=self.options.name, device=self.options.device, ema=self._settings["ema"],
                      mode="once" if self.options.once else ("poll" if self.options.poll else "events"), **where)
        self._pin_early()
        log.quiet_tensorflow()
        try:
            with self.shutdown.interruptible():  # Ctrl-C does not wait for TensorFlow's import
                task = self._task()
                if task is None:  # stopped while waiting for the graph
                    return
                self.model = self._build(task)
        except Interrupted:
            return
        check_actions(self.options, self.model, self.directories, several=not self.single)
        self.store = Store.prepare(self.options.db_url, wait=self.options.db_wait, on_retry=self._db_retry)
        self.heartbeat = Heartbeat(self.store, self.owner, self.options.lease)
        self.attempts = Attempts(self.options, store=self.store, model=self.model, heartbeat=self.heartbeat,
                                 notifier=self.notifier, shutdown=self.shutdown, ending=self.ending,
                                 owner=self.owner, settings=self._settings, log=self.log,
                                 status_line=self._status_line)
        for directory in self.directories:
            self._add_run(directory)
        self._discover()
        self.log.info("database ready", db=describe(self.options.db_url), revision=self.store.revision(),
                      recorded=sum(run.backlog.recorded_count() for run in self.runs.values()))
        self.heartbeat.start()
        self.notifier.ready(self._status_line())

    def _task(self) -> Any:
        """The task: --task's object, or the one the no-code options stand for, built from the first
        checkpoint's `.meta` (--meta-graph) or the first export (--savedmodel, --frozen-graph): it is
        waited for (None if stopped meanwhile; with --once, ConfigError)."""
        request = self.options.nocode
        if request is None:
            return load_task(self.options.task)
        from evaluator import nocode

        said = False
        while (first := nocode.first(request, self.directories[0])) is None:
            if self.options.once:
                raise ConfigError(nocode.nothing_yet(request, self.directories[0]))
            if not said:
                self.log.info(f"waiting for {nocode.WAITING_FOR[request.mode]} to build the model from")
                self.notifier.status(f"waiting for {nocode.WAITING_FOR[request.mode]} in {self.directories[0]}")
                said = True
            # Not READY yet: under systemd, the start's timeout is pushed back while training has
            # written nothing (systemd >= 236), and the watchdog fed.
            self.notifier.send(f"EXTEND_TIMEOUT_USEC={int(3 * MISSING_DIR_TICK * 1e6)}")
            self.notifier.ping()
            if self.shutdown.wait(MISSING_DIR_TICK):
                return None
        self.log.info("building the model from", first=first)
        return nocode.task(request, first)

    def _check_directories(self) -> None:
        if not self.single and (self.options.until_step is not None or self.options.done_file):
            raise ConfigError("--until-step and --done-file end the watch of one model directory; with several "
                              "(or --root), use --idle-timeout")
        for given, directory in [*zip(self.options.directories, self.directories), *zip(self.options.roots, self.roots)]:
            if is_remote(directory):
                self._check_remote(directory)
                continue
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

    def _check_remote(self, location: str) -> None:
        """An object-storage location: the extra installed, the bucket there (unless --wait-for-dir),
        and the options that need a local model directory refused."""
        from evaluator.sources import remote

        if self.options.done_file:
            raise ConfigError(f"--done-file is for a local model directory, not {location}: use --until-step "
                              "or --idle-timeout")
        if self.options.nocode is not None:
            raise ConfigError(f"--meta-graph, --savedmodel and --frozen-graph read a local directory, not {location}")
        remote.check(location, wait=self.options.wait_for_dir)

    def _pin_early(self) -> None:
        """Before TensorFlow loads and the model is built (seconds): each model directory watched and
        what is complete in it pinned, so that what training writes and rotates away meanwhile is
        kept for the run (sources/pins.py). Exported models (--savedmodel, --frozen-graph) are not pinned."""
        if self.options.nocode is not None and self.options.nocode.mode != "meta-graph":
            return
        for directory in self.directories:
            if not os.path.isdir(directory):
                continue
            source = open_source(directory, weight_files=True, poll=self.options.poll,
                                 poll_interval=self.options.poll_interval, pins=self._pins(directory))
            if not self.options.once:
                source.watch(lambda: None, lambda ckpt: None)  # pins each checkpoint as its index appears
            try:
                state = source.listed()
            except StateFileError:
                state = checkpoints.State()
            families = {checkpoints.family(ckpt.name) for ckpt in state.checkpoints}
            for ckpt in [*state.checkpoints, *source.found(families)]:
                source.pin(ckpt)
            self._early_sources[directory] = source

    def _pins(self, directory: str) -> Pins:
        location = checkpoints.normalize_model_dir(directory)
        return Pins(location, self.options.name, self.options.pin_budget, log.get(model_dir=location))

    def _open_source(self, directory: str) -> Source:
        """The run's source: the one watched since before the model was built, or a new one."""
        assert self.model is not None
        if is_remote(directory):  # pinned by staging its downloads (sources/remote.py)
            return open_source(directory, weight_files=self.model.reads_weight_files,
                               poll_interval=self.options.poll_interval, pin_budget=self.options.pin_budget)
        source = self._early_sources.pop(directory, None)
        if source is None or self.model.artifact is not None:
            if source is not None:
                source.stop()
            return open_source(directory, weight_files=self.model.reads_weight_files, poll=self.options.poll,
                               poll_interval=self.options.poll_interval, artifact=self.model.artifact,
                               pins=None if self.model.artifact else self._pins(directory))
        source.reads_weight_files(self.model.reads_weight_files)  # type: ignore[attr-defined]
        return source

    def _add_run(self, directory: str) -> Run:
        """Start serving a model directory: its rows, its actions (caught up), its watcher."""
        assert self.store is not None and self.model is not None and self.heartbeat is not None
        source = self._open_source(directory)
        run = Run(source, grace=self.options.missing_grace, name=self.options.name, on_new=self.ending.activity)
        run.load_rows(self.store)
        self._check_settings(run)
        if not self.single:
            run.log.info("serving this model directory", recorded=run.backlog.recorded_count())
        run.actions = build_actions(self.options, directory, self.model, run.log, self.store, several=not self.single)
        if is_remote(directory):
            self._say_where_outputs_go(run)
        self._catch_up(run)
        if not self.options.once:
            run.watch(self._wake.set, self._busy)
            run.adopt_pins()  # what the early watcher pinned since the rows were read, before the run heard of it
        self.runs[directory] = run
        self.heartbeat.watching(list(self.runs))
        return run

    def _say_where_outputs_go(self, run: Run) -> None:
        """A remote model directory's outputs are local: say where (and where its copies are staged)."""
        from evaluator.actions.setup import export_dir, summary_dir

        several = not self.single
        staging = getattr(run.source, "staging", None)
        run.log.info("a remote model directory: its outputs are written locally",
                     summary_dir=summary_dir(self.options, run.model_dir, several) if self.options.summaries else None,
                     export_dir=export_dir(self.options, run.model_dir, several) if self.options.keep_best else None,
                     staging=getattr(run.source, "stage_dir", None),
                     pin_budget=staging.describe() if staging is not None else None)

    def _discover(self) -> None:
        """--root: serve each run that appeared below a root; forget those that are gone."""
        if not self.roots:
            return
        self._watch_roots()
        assert self.model is not None and self.heartbeat is not None
        try:
            found = {d for root in self.roots for d in discover(root, self.options.depth, self.model.reads_weight_files)}
        except SourceUnavailable as err:  # object storage out of reach: the next tick looks again
            self.log.warning("cannot list a root; will try again", error=str(err), retry_in=self.options.rescan_interval)
            return
        for directory in sorted(found - set(self.runs)):
            try:
                self._add_run(directory)
            except StoreWriteError as err:  # the database is away: the next tick tries again
                self.log.warning("cannot read a new run's rows; will try again", model_dir=directory, error=str(err))
        for directory in sorted(set(self.runs) - found - set(self.directories)):
            if is_remote(directory) or not os.path.isdir(directory):
                self.runs.pop(directory).stop()
                self.log.info("model directory gone; no longer served", model_dir=directory)
                self.heartbeat.watching(list(self.runs))

    def _watch_roots(self) -> None:
        """Watch each root for new runs (once it is there): one is served within a moment of its
        state file, not at the next --rescan."""
        if self.options.once:
            return
        assert self.model is not None
        for root in self.roots:
            if root not in self._root_watchers:
                watcher = watch_root(root, self._new_run, weight_files=self.model.reads_weight_files)
                if watcher is not None:
                    self._root_watchers[root] = watcher

    def _new_run(self) -> None:
        """From a root's watcher thread: something below it may be a new run; look at once."""
        self._discover_now.set()
        self._wake.set()

    def _catch_up(self, run: Run) -> None:
        """Each action does what the rows already recorded call for and it has not done."""
        assert self.store is not None and self.attempts is not None
        if not run.actions:
            return
        rows = list(self.store.ok_rows(run.model_dir, self.options.name))
        for action in run.actions:
            self.attempts.run_action(run, action, "catch up", lambda a=action: a.catch_up(rows))

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
        for watcher in self._root_watchers.values():
            watcher.stop()
        for source in self._early_sources.values():  # pinned, but no run took them: the start failed or was stopped
            source.stop()
            if self.shutdown.requested:
                say_pinned(source, self.log.bind(model_dir=source.location))
            elif source.pins is not None:  # type: ignore[attr-defined]
                source.pins.release_made()  # type: ignore[attr-defined]  # bad input leaves nothing behind
        for run in self.runs.values():
            run.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for run in self.runs.values():
            for action in run.actions:
                if self.attempts is not None:
                    self.attempts.run_action(run, action, "close", action.close)
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
            "failed evaluations": (self.attempts.failed if self.attempts else 0) or None,
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
            if not present:
                # Nothing read the wake (evaluate_pending clears it): the event that said the directory
                # went would otherwise end every wait at once, a busy loop until it comes back.
                self._wake.clear()
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
        if rescan or self._discover_now.is_set():
            self._discover_now.clear()
            self._discover()
        if rescan:
            self._last_rescan = time.monotonic()
        done = 0
        tried: dict[str, set[str]] = {}
        for run in list(self.runs.values()):
            scanned = run.observe()
            if rescan:
                assert self.store is not None
                run.rescan(self.store, self.options.rescan_interval, disk=not scanned)
            absent = [p for p in run.backlog.due() if not run.source.complete(p.checkpoint)]
            done += self.attempts.settle_absent(run, absent, self._once)  # type: ignore[union-attr]
            tried[run.model_dir] = {p.checkpoint.name for p in absent}
        newest = self.options.order == "newest"
        while not self.shutdown.requested and not self.ending.reason:
            progressed = False
            for run in self._in_turn():
                skip = tried.setdefault(run.model_dir, set())
                batch = run.backlog.next_batch(skip, newest=newest, count=self.attempts.batch_size())  # type: ignore[union-attr]
                if not batch:
                    continue
                progressed = True
                skip.update(p.checkpoint.name for p in batch)
                recorded, stop = self.attempts.batch(run, batch)  # type: ignore[union-attr]
                done += recorded
                if stop:
                    return done
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

    # -- one checkpoint ---------------------------------------------------------------------

    def _status_line(self) -> str:
        where = self.directories[0] if self.single else f"{len(self.runs)} model directories"
        last = self.attempts.last if self.attempts else None
        if last is None or last.accuracy is None:
            return f"watching {where}"
        return f"watching {where}, last step {last.step} acc {last.accuracy:.4f}"




def measured(model: EvalModel) -> dict[str, Any]:
    """The settings a model adds when it measures more than the defaults (metrics, named sets)."""
    from evaluator.metrics import DEFAULTS

    extra: dict[str, Any] = {}
    if list(model.suite.goals) != list(DEFAULTS[model.sets.problem]):
        extra["metrics"] = list(model.suite.goals)
    if model.sets.named:
        extra["validation_sets"] = model.sets.names
    return extra
