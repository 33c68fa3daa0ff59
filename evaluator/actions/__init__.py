"""What happens after a row is recorded: TensorBoard summaries, the best checkpoint kept and
exported. The loop does not know what they do; it calls each in turn.

Every action runs after its row is in the database, so a crash can repeat an action but never
lose a row; each is idempotent (keyed by step or checkpoint), and at start each catches up with
what the database holds (the database is the truth). In a pool, what several workers write to one
place (the kept best, a summary directory) is written under a lock the store gives
(`Shared.exclusive`), one worker at a time, from what the database holds at that moment. An action
that fails logs a warning: it never stops the evaluation of the next checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from evaluator.evaluation import Evaluation, Ranking


@dataclass(frozen=True)
class Recorded:
    """A recorded evaluation as the actions get it, with what only the moment after it holds."""

    evaluation: Evaluation
    #: The checkpoint's files, open since before the evaluation (name -> file object): what is
    #: kept even if training deleted them meanwhile.
    held: dict[str, Any]
    #: The evaluation model, holding this checkpoint's (averaged) weights until the next one.
    model: Any = None


class Shared(Protocol):
    """What actions ask of the store: a lock across the pool, and the best rows of all workers."""

    def exclusive(self, scope: str) -> AbstractContextManager[None]: ...

    def top(self, model_dir: str, name: str, metric: str | None, limit: int) -> Ranking: ...


class Action(Protocol):
    """A consumer of recorded evaluations."""

    name: str

    def catch_up(self, rows: Iterable[Evaluation]) -> None:
        """At start: do what the database's rows (every ok row of this evaluation) call for and
        was not done (a crash between the row and the action)."""
        ...

    def after(self, recorded: Recorded) -> None:
        """Right after a row is written."""
        ...

    def close(self) -> None: ...


def after_many(action: Action, recorded: list[Recorded]) -> None:
    """Right after rows are written together (a backlog's batch, by step): the action's own
    `after_many` where it can do better than once per row (one flush, one choice), else `after`
    for each."""
    many = getattr(action, "after_many", None)
    if many is not None:
        many(recorded)
        return
    for one in recorded:
        action.after(one)
