"""The daemon: start-up, the loop that evaluates every listed checkpoint exactly once, shutdown.

    wake (state-file event, re-scan tick, start-up)
      -> pending = checkpoints listed in the state file (now or since the last pass) without a row
      -> for each, oldest step first: restore (EMA) -> validate -> record one row -> log, STATUS
      -> wait for the next wake

The watcher only reads the state file and wakes the loop; what is pending is derived from state
file reads and the database, never from events, so a missed event delays a checkpoint (until the
next tick) and a restart resumes exactly where the rows end.
"""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from evaluator import checkpoints, log
from evaluator.checkpoints import Checkpoint
from evaluator.errors import (
    EXIT_OK,
    Abandoned,
    CheckpointError,
    CheckpointMissing,
    ModelDirError,
    StateFileError,
    StoreWriteError,
    first_line,
)
from evaluator.evaluation import Evaluation, Status
from evaluator.notify import Notifier
from evaluator.options import WatchOptions
from evaluator.shutdown import Shutdown
from evaluator.store import Store, describe
from evaluator.task import batch_size_of, load_task
from evaluator.watcher import Watcher

if TYPE_CHECKING:  # pragma: no cover - the model module imports TensorFlow; it is loaded at start-up
    from evaluator.model import EvalModel

#: Longest pause between retries of a failed database write.
MAX_RETRY_DELAY = 60.0
#: How often to look for the model directory while it is missing.
MISSING_DIR_TICK = 1.0


@dataclass(frozen=True)
class _Seen:
    """A checkpoint without a row, and when it was first seen."""

    checkpoint: Checkpoint
    detected_at: datetime
    order: int
    #: Listed in the state file (False: only its `.index` was seen being written so far).
    listed: bool = True

    @property
    def sort_key(self) -> tuple[bool, int, int]:
        step = self.checkpoint.name_step
        return step is None, step or 0, self.order


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}
        self._recorded: set[str] = set()
        #: Name families (`model.ckpt`) of the checkpoints the state file has listed.
        self._families: set[str] = set()
        self._order = itertools.count()
        self._state_problem: str | None = None
        self._ignored_paths: set[str] = set()
        self._present: bool | None = None
        self._last: Evaluation | None = None

    # -- the whole run ----------------------------------------------------------------------

    def run(self) -> int:
        """Start, evaluate until stopped (or once), stop. Raises ConfigError for what can't work."""
        with self.shutdown.handling_signals(on_signal=self._wake.set):
            try:
                self._start()
                self._loop()
            finally:
                self._stop()
        return EXIT_OK

    def _start(self) -> None:
        # Every check of the configuration comes before the database is touched: bad input
        # writes nothing (not even a new, empty database).
        self._check_model_dir()
        Store.check_url(self.options.db_url)
        self.log.info("starting", task=self.options.task, db=describe(self.options.db_url),
                      device=self.options.device, ema=self.options.ema,
                      mode="once" if self.options.once else ("poll" if self.options.poll else "events"))
        log.quiet_tensorflow()
        self.model = self._build(load_task(self.options.task))
        self.store = Store.open(self.options.db_url, create=True)
        self.store.upgrade()
        self._recorded = self.store.recorded(self.model_dir)
        self.log.info("database ready", db=describe(self.options.db_url), revision=self.store.revision(),
                      recorded=len(self._recorded))
        if not self.options.once:
            self.watcher = Watcher(self.model_dir, self._on_change, on_written=self._on_written,
                                   poll=self.options.poll, poll_interval=self.options.poll_interval)
            self.watcher.start()
        self.notifier.ready(self._status_line())

    def _check_model_dir(self) -> None:
        if os.path.isdir(self.model_dir) or self.options.wait_for_dir:
            return
        if os.path.exists(self.model_dir):
            raise ModelDirError(f"{self.options.model_dir} is not a directory")
        raise ModelDirError(
            f"model directory {self.options.model_dir} does not exist "
            "(pass --wait-for-dir to wait for training to create it)"
        )

    def _build(self, task: Any) -> EvalModel:
        from evaluator.model import EvalModel  # imports TensorFlow

        log.route_tensorflow_logger()
        batch_size = self.options.batch_size or batch_size_of(task)
        model = EvalModel.build(task, device=self.options.device, ema=self.options.ema,
                                ema_name=self.options.ema_name,
                                **({"batch_size": batch_size} if batch_size else {}))
        self.log.info("evaluation model built", device=model.device, operations=model.operations,
                      examples=model.validator.examples)
        return model

    def _stop(self) -> None:
        if self.shutdown.requested:
            self.log.info("stopping", signal=self.shutdown.signal_name)
        self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        if self.model is not None:
            self.model.close()
        if self.store is not None:
            self.store.release()
        self.notifier.close()
        self.log.info("stopped")

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.shutdown.requested:
            present = self._ensure_watch()
            if present or (self.options.once and not self.options.wait_for_dir):
                self.evaluate_pending()
                if self.options.once:
                    return
            self._idle(present)

    def evaluate_pending(self) -> int:
        """Evaluate every listed checkpoint that has no row yet, oldest step first; returns how many."""
        self._wake.clear()  # before reading: a change from now on wakes the next pass
        self._observe()
        done = 0
        for seen in self._pending():
            if self.shutdown.requested:
                break
            if not seen.listed and checkpoints.exists(seen.checkpoint.path):
                continue  # written, not yet in the state file: that file decides, once it lists it
            evaluation = self._evaluate(seen)
            if evaluation is None:  # abandoned for shutdown
                break
            self._record(evaluation)
            done += 1
        return done

    def _idle(self, present: bool) -> None:
        if self.store is not None:
            self.store.release()
        self.notifier.ping()
        timeout = self.options.rescan_interval if present else min(self.options.rescan_interval, MISSING_DIR_TICK)
        if self.notifier.watchdog_interval:
            timeout = min(timeout, self.notifier.watchdog_interval / 2)
        self._wake.wait(timeout)

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
        """From the watcher's thread: note what the state file lists now, and wake the loop."""
        self._observe()
        self._wake.set()

    def _observe(self) -> None:
        """Read the state file and remember the listed checkpoints that have no row yet."""
        try:
            state = checkpoints.read_state(self.model_dir)
        except StateFileError as err:
            self._state_file_problem(str(err))
            return
        self._state_file_problem(None)
        detected_at = utcnow()
        new: list[Checkpoint] = []
        with self._lock:
            for ckpt in state.checkpoints:
                self._families.add(checkpoints.family(ckpt.name))
                seen = self._seen.get(ckpt.name)
                if seen is not None and not seen.listed:
                    self._seen[ckpt.name] = replace(seen, listed=True)
                elif seen is None and ckpt.name not in self._recorded:
                    self._seen[ckpt.name] = _Seen(ckpt, detected_at, next(self._order))
                    new.append(ckpt)
            ignored = [p for p in state.ignored if p not in self._ignored_paths]
            self._ignored_paths.update(ignored)
        for path in ignored:
            self.log.warning("state file lists a path outside the model directory; ignored", path=path)
        for ckpt in new:
            self.log.info("checkpoint detected", checkpoint=ckpt.name, step=ckpt.name_step, source="state file")

    def _on_written(self, prefix: str) -> None:
        """From the watcher's thread: a checkpoint's index appeared. If it belongs to a family the
        state file lists, remember it, so that even if it is deleted before we read a state file
        listing it, it still gets its row (`missing`)."""
        ckpt = checkpoints.at(self.model_dir, prefix)
        if ckpt is None:
            return
        with self._lock:
            if (checkpoints.family(ckpt.name) not in self._families or ckpt.name in self._recorded
                    or ckpt.name in self._seen):
                return
            self._seen[ckpt.name] = _Seen(ckpt, utcnow(), next(self._order), listed=False)
        self.log.info("checkpoint detected", checkpoint=ckpt.name, step=ckpt.name_step, source="index written")
        self._wake.set()

    def _state_file_problem(self, problem: str | None) -> None:
        with self._lock:
            changed, self._state_problem = problem != self._state_problem, problem
        if changed and problem:
            self.log.warning("state file unreadable; waiting for a valid one", error=problem)
        elif changed:
            self.log.info("state file readable again")

    def _pending(self) -> list[_Seen]:
        with self._lock:
            return sorted(self._seen.values(), key=lambda seen: seen.sort_key)

    # -- one checkpoint ---------------------------------------------------------------------

    def _evaluate(self, seen: _Seen) -> Evaluation | None:
        """Restore and validate one checkpoint; None when shutdown abandoned it."""
        assert self.model is not None
        ckpt = seen.checkpoint
        self.notifier.status(f"evaluating {ckpt.name} ({len(self._seen)} pending)")
        started_at = utcnow()
        base = Evaluation(model_dir=self.model_dir, checkpoint=ckpt.name, step=ckpt.name_step,
                          status=Status.FAILED, evaluated_at=started_at, device=self.model.device,
                          detected_at=seen.detected_at, started_at=started_at)
        try:
            outcome = self.model.evaluate(ckpt, progress=self._progress)
        except Abandoned:
            self.log.warning("evaluation abandoned for shutdown; it runs again at the next start",
                             checkpoint=ckpt.name)
            return None
        except CheckpointMissing as err:
            return replace(base, status=Status.MISSING, error=str(err), evaluated_at=utcnow())
        except CheckpointError as err:
            return replace(base, error=str(err), evaluated_at=utcnow())
        except Exception as err:  # anything else one checkpoint can do must not end the daemon
            self.log.exception("evaluation raised", checkpoint=ckpt.name)
            return replace(base, error=f"{type(err).__name__}: {first_line(err)}", evaluated_at=utcnow())
        metrics = outcome.metrics
        return replace(base, status=Status.OK, step=outcome.step, accuracy=metrics.accuracy,
                       loss=metrics.loss, examples=metrics.examples, ema=outcome.ema,
                       restore_seconds=outcome.restore_seconds, eval_seconds=metrics.seconds,
                       evaluated_at=utcnow())

    def _progress(self, examples: int) -> None:
        """After each validation batch: the loop is alive; give up if shutdown's grace is over."""
        self.notifier.ping()
        self.shutdown.check()

    def _record(self, evaluation: Evaluation) -> None:
        """Write the row, retrying while the database refuses; gives up only on shutdown."""
        assert self.store is not None
        delay = 1.0
        while True:
            try:
                inserted = self.store.record(evaluation)
                break
            except StoreWriteError as err:
                self.log.warning("cannot record the evaluation; will retry", checkpoint=evaluation.checkpoint,
                                 error=str(err), retry_in=delay)
                self.notifier.status(f"cannot write the database, retrying: {err}")
                if self._sleep(delay):
                    self.log.error("stopping with an unrecorded result; the checkpoint runs again at the next start",
                                   checkpoint=evaluation.checkpoint)
                    return
                delay = min(delay * 2, MAX_RETRY_DELAY)
        with self._lock:
            self._recorded.add(evaluation.checkpoint)
            self._seen.pop(evaluation.checkpoint, None)
        if inserted:
            if evaluation.status is Status.OK:
                self._last = evaluation
            self._log_evaluation(evaluation)
        else:
            self.log.warning("already recorded by another evaluator; kept that row", checkpoint=evaluation.checkpoint)
        self.notifier.status(self._status_line())

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
        fields: dict[str, Any] = {"checkpoint": e.checkpoint, "step": e.step, "status": e.status.value}
        if e.status is Status.OK:
            fields.update(accuracy=round(e.accuracy or 0.0, 6), loss=round(e.loss or 0.0, 6), examples=e.examples,
                          ema=e.ema, restore_seconds=round(e.restore_seconds or 0.0, 4),
                          eval_seconds=round(e.eval_seconds or 0.0, 4), device=e.device)
            self.log.info("evaluated", **fields)
        else:
            self.log.warning("evaluated", error=e.error, **fields)

    def _status_line(self) -> str:
        last = self._last
        if last is None or last.accuracy is None:
            return f"watching {self.model_dir}"
        return f"watching {self.model_dir}, last step {last.step} acc {last.accuracy:.4f}"
