"""What the commands were asked to do: options, defaults and allowed values (imports nothing heavy)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from typing import TYPE_CHECKING, Any

from evaluator.checkpoints import EMA_NAME
from evaluator.evaluation import DEFAULT_NAME

if TYPE_CHECKING:  # pragma: no cover
    from evaluator.nocode import NoCode

DEVICES = ("auto", "cpu", "gpu")
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
ORDERS = ("oldest", "newest")
#: The built-in metrics (evaluator.metrics), as `--metric` takes them: K and C are whole numbers.
METRIC_NAMES = ("accuracy", "loss", "top_k_accuracy:K", "precision[:C]", "recall[:C]", "f1[:C]", "auc[:C]",
                "mae", "mse", "rmse")
_METRIC = re.compile(r"accuracy|loss|mae|mse|rmse|top_k_accuracy:[1-9]\d{0,5}|(precision|recall|f1|auc)(:\d{1,6})?")


def is_metric_name(name: str) -> bool:
    """Whether `name` is a built-in metric, with its argument where it takes one."""
    return _METRIC.fullmatch(name) is not None


#: The environment variable that names the database when --db is not given.
DB_ENV = "EVALUATOR_DB"


#: --pin-budget's default: a tenth of the free space where the copies go.
DEFAULT_PIN_BUDGET = "10%"


@dataclass(frozen=True)
class WatchOptions:
    """Everything `evaluator watch` was asked to do."""

    #: The model directory (one), or see model_dirs / roots.
    model_dir: str
    task: str
    db_url: str
    #: More model directories served by the same process (with model_dir, or instead of it).
    model_dirs: tuple[str, ...] = ()
    #: Directories whose subdirectories (to `depth` levels) holding checkpoints are served, as they appear.
    roots: tuple[str, ...] = ()
    depth: int = 3
    #: Which pending checkpoint of a run first: "oldest" step (every one in order) or "newest".
    order: str = "oldest"
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
    #: The evaluation's name: part of every row's key (several evaluations of one directory).
    name: str = DEFAULT_NAME
    #: Seconds a listed checkpoint may stay absent from disk (while newer ones are there) before
    #: it is recorded `missing`.
    missing_grace: float = 60.0
    #: Consecutive task or environment faults tolerated (each retried with backoff) before exiting 75.
    retries: int = 5
    #: Seconds before the first retry after a fault; it doubles with each.
    retry_delay: float = 1.0
    #: Seconds a claim lives without a heartbeat.
    lease: float = 90.0
    #: Seconds start-up waits for a locked or unreachable database before exiting 75.
    db_wait: float = 60.0
    #: Built-in metrics (metrics.py) computed besides the defaults and the task's own.
    metrics: tuple[str, ...] = ()
    #: TensorBoard summaries: written unless False; into summary_dir (default MODEL_DIR/eval).
    summaries: bool = True
    summary_dir: str | None = None
    #: How many best checkpoints to keep (0: none), by which metric (None: accuracy, else loss), where.
    keep_best: int = 1
    best_metric: str | None = None
    export_dir: str | None = None
    #: Exports of each kept checkpoint beyond its files: "savedmodel", "frozen".
    export: tuple[str, ...] = ()
    #: The end of training: a step, a quiet spell (seconds), a file training writes when done.
    until_step: int | None = None
    idle_timeout: float | None = None
    done_file: str | None = None
    #: The most bytes of checkpoints copied to be kept from training's deletion where a hard link
    #: cannot be made (another file system): a byte count, or "N%" of the free space at start.
    pin_budget: int | str = DEFAULT_PIN_BUDGET
    #: The no-code mode (--meta-graph, --savedmodel, --frozen-graph) standing for a task; `task` then
    #: describes it.
    nocode: NoCode | None = None

    @property
    def directories(self) -> list[str]:
        """Every model directory named (not the ones --root discovers)."""
        return list(dict.fromkeys([d for d in (self.model_dir, *self.model_dirs) if d]))

    def settings(self) -> dict[str, Any]:
        """What decides the numbers an evaluation records (stored with each row, compared at start)."""
        ema = self.ema and (self.nocode is None or self.nocode.restores_averages)
        return {"task": self.task, "ema": ema, "ema_name": self.ema_name if ema else None}
