"""What the commands were asked to do: options, defaults and allowed values (imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass

from evaluator.checkpoints import EMA_NAME

DEVICES = ("auto", "cpu", "gpu")
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: The environment variable that names the database when --db is not given.
DB_ENV = "EVALUATOR_DB"


@dataclass(frozen=True)
class WatchOptions:
    """Everything `evaluator watch` was asked to do."""

    model_dir: str
    task: str
    db_url: str
    once: bool = False
    poll: bool = False
    #: Seconds between directory scans with --poll.
    poll_interval: float = 1.0
    #: Seconds between re-reads of the state file when no event came (the safety net).
    rescan_interval: float = 10.0
    wait_for_dir: bool = False
    ema: bool = True
    ema_name: str = EMA_NAME
    device: str = "auto"
    batch_size: int | None = None
    #: Seconds an evaluation in progress may take to finish after SIGTERM before it is abandoned.
    stop_grace: float = 20.0
