"""Logging: structlog for our events, the standard library's loggers (alembic, watchdog,
tensorflow) routed through the same processors; console rendering on a terminal, JSON lines
otherwise. Everything goes to stderr, so commands' stdout stays clean for pipes."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import IO, Any

import structlog


def configure(fmt: str = "auto", level: str = "info", stream: IO[str] | None = None) -> None:
    """Set up structlog and the stdlib root logger once, for the whole process."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Any
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries: their warnings are worth seeing, their info lines are not ours to show.
    for name in ("alembic", "watchdog", "tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def _finite(value: Any) -> Any:
    """NaN and infinities as strings: JSON has no such numbers, and a log line must stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _json_dumps(event: Any, **kwargs: Any) -> str:
    return json.dumps(_finite(event), allow_nan=False, **kwargs)


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ INFO/WARNING lines out of the log (errors still show); call before importing it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def route_tensorflow_logger() -> None:
    """TensorFlow's Python logger has a handler of its own: send its records through ours instead."""
    logger = logging.getLogger("tensorflow")
    logger.handlers[:] = []
    logger.propagate = True


def get(name: str = "evaluator", **context: Any) -> structlog.stdlib.BoundLogger:
    """A bound logger; `context` is added to every event it logs."""
    return structlog.get_logger(name).bind(**context)
