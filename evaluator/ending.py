"""When `watch` ends by itself, with the training job: at a step (--until-step), after a quiet spell
(--idle-timeout, what tf.train.checkpoints_iterator's timeout does), or when training writes a
file saying it is done (--done-file: what is pending is evaluated first). Each ends with exit 0 and
a log line saying why, so a systemd instance ends with its job."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from evaluator.evaluation import Evaluation, Status


@dataclass
class Ending:
    until_step: int | None = None
    #: Seconds without a new checkpoint (or an evaluation) after which to stop.
    idle_timeout: float | None = None
    #: The done file's path, if one is watched for.
    done_file: str | None = None
    #: Why the run ends, once it does.
    reason: str | None = None
    #: Whether it ends because --until-step was reached (what is still pending is then left).
    reached_step: bool = False
    #: time.monotonic() of the last new thing; None until a model directory is there (the idle
    #: clock of --wait-for-dir starts when training creates the directory, not with the process).
    last_activity: float | None = None

    @property
    def active(self) -> bool:
        return self.until_step is not None or self.idle_timeout is not None or self.done_file is not None

    def activity(self) -> None:
        """Something new: a model directory appeared, a checkpoint was detected or evaluated."""
        self.last_activity = time.monotonic()

    def reaches(self, evaluation: Evaluation) -> bool:
        """Whether recording `evaluation` ends the run at --until-step (a batch stops there too)."""
        return (self.until_step is not None and evaluation.status is not Status.MISSING
                and evaluation.step is not None and evaluation.step >= self.until_step)

    def recorded(self, evaluation: Evaluation) -> None:
        self.activity()
        if self.reaches(evaluation):
            self.reason = f"evaluated step {evaluation.step}, at or past --until-step {self.until_step}"
            self.reached_step = True

    def done_file_seen(self) -> bool:
        return self.done_file is not None and os.path.exists(self.done_file)

    def quiet(self, nothing_pending: bool) -> None:
        """Called when the loop goes idle: ends the run after --idle-timeout of nothing new."""
        if self.idle_timeout is None or self.last_activity is None or not nothing_pending:
            return
        quiet_for = time.monotonic() - self.last_activity
        if quiet_for >= self.idle_timeout:
            self.reason = f"nothing new for {quiet_for:.0f} s (--idle-timeout {self.idle_timeout:g} s)"

    def wake_in(self) -> float | None:
        """Seconds until --idle-timeout would end the run (the idle wait is no longer than that);
        None when there is no clock, or it ran out while something is still pending (the loop then
        checks again when that is done, rather than spinning)."""
        if self.idle_timeout is None or self.last_activity is None:
            return None
        left = self.last_activity + self.idle_timeout - time.monotonic()
        return left if left > 0 else None
