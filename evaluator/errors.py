"""The project's exceptions: each says what went wrong and what to do, and carries its exit code.

`cli.main` is the one place that turns them into a one-line message and an exit status.
"""

from __future__ import annotations

EXIT_OK = 0
#: An unexpected crash (a bug): worth a restart by a supervisor.
EXIT_CRASH = 1
#: The configuration can't work (arguments, task, database, model directory): fix it, don't restart.
EXIT_CONFIG = 2
#: `watch --once` finished, but not everything is evaluated: the state file was unreadable, or an
#: evaluation of this run ended `failed`.
EXIT_INCOMPLETE = 3
#: Something outside the evaluator is in the way for now (the database locked, unreachable, deleted
#: or replaced; the task or its environment failing on every try): a restart may succeed
#: (EX_TEMPFAIL from sysexits.h). Nothing was lost: what has no row is evaluated again.
EXIT_TEMPORARY = 75
#: `report` / `plot` found no rows for what they were asked to show.
EXIT_NO_ROWS = 4
#: `db current`: the schema is older than this evaluator's (or missing): run `evaluator db upgrade`.
EXIT_UPGRADE_NEEDED = 5


class EvaluatorError(Exception):
    """An error with a message meant for the user."""

    exit_code = EXIT_CRASH


class ConfigError(EvaluatorError):
    """The command was given something that can't work; restarting will not help."""

    exit_code = EXIT_CONFIG


class ModelDirError(ConfigError):
    """The model directory is missing or is not a directory."""


class TaskError(ConfigError):
    """The --task spec can't be imported, lacks a member, or builds a graph that can't be evaluated."""


class DatabaseError(ConfigError):
    """The database URL is malformed, can't be opened, or holds a schema this version can't use."""


class SchemaMissing(DatabaseError):
    """The database has no evaluator schema (yet: `watch` may be creating it)."""


class DeviceError(ConfigError):
    """The requested device (--device gpu) is not available."""


class TemporaryError(EvaluatorError):
    """Something outside the evaluator is in the way for now; a restart (by systemd) may succeed."""

    exit_code = EXIT_TEMPORARY


class DatabaseUnavailable(TemporaryError):
    """The database stayed locked or unreachable at start-up for longer than --db-wait."""


class DatabaseGone(TemporaryError):
    """The database file was deleted or replaced, or lost its schema, while `watch` ran."""


class FaultsExhausted(TemporaryError):
    """The task or its environment failed on --retries consecutive tries; the checkpoints stay pending."""


class StoreWriteError(EvaluatorError):
    """A row could not be written now (disk full, read-only file, locked); retrying may succeed."""


class DatabaseAway(StoreWriteError):
    """The database server is out of reach for now (a read or a write): retried, like a failed write."""


class SourceUnavailable(TemporaryError):
    """Object storage can't be reached (the endpoint, the credentials); a restart may succeed."""


class CheckpointDeferred(EvaluatorError):
    """A source can't give a local copy of a checkpoint now (staging past --pin-budget, a download
    that failed): it stays pending and is tried again after `retry_in` seconds."""

    def __init__(self, message: str, retry_in: float) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class StateFileError(EvaluatorError):
    """The model directory's `checkpoint` state file exists but can't be read or parsed."""


class CheckpointError(EvaluatorError):
    """One checkpoint can't be restored or evaluated; it is recorded as `failed`."""


class CheckpointMissing(CheckpointError):
    """The checkpoint's files are gone (deleted by `max_to_keep`); it is recorded as `missing`."""


class CheckpointIncomplete(CheckpointError):
    """A read of the checkpoint came up short or garbled: it may still be being written (a slow copy,
    a network file system). Retried while its files change; `failed` once they have settled."""


class EvaluationFault(EvaluatorError):
    """Evaluating failed for a reason that is not the checkpoint's (the validation data, the task's
    code, the machine): the checkpoint stays pending and is tried again with backoff."""


class Abandoned(BaseException):
    """Shutdown asked to drop the evaluation in progress; no row is written for it.

    A BaseException, like KeyboardInterrupt: it is control flow, and the per-checkpoint
    guard that turns every Exception into a `failed` row must let it through.
    """


class Interrupted(BaseException):
    """A stop request during start-up's long steps (TensorFlow's import, the model's build): they
    hold nothing that needs a clean end, so they are cut short rather than waited for."""


#: Lines TensorFlow wraps an op error's reason in ("Graph execution error:", where the op was
#: defined, the node, the stack); they say nothing about what went wrong.
_FRAMING = ("Graph execution error", "Detected at node", "Node: ", "File \"", "[[", "Original stack trace",
            "Traceback", "Detected unsupported operations", "defined at (most recent call last)")


def first_line(err: BaseException, limit: int = 500) -> str:
    """The line of an error's message that says what went wrong, at most `limit` characters.

    TensorFlow's messages run to pages; their reason is the first line that is not framing.
    """
    text = getattr(err, "message", None) or str(err)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(_FRAMING)]
    line = (reasons or lines or [type(err).__name__])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"
