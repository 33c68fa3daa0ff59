"""Logging: structlog for our events, the standard library's loggers (alembic, watchdog,
tensorflow) routed through the same processors; console rendering on a terminal, JSON lines
otherwise. Everything goes to stderr, so commands' stdout stays clean for pipes."""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import sys
import threading
from typing import IO, Any

import structlog


_json = False
#: Fields of the `evaluated` event that a terminal does not need on every line (they never change
#: within a run, and the start-up lines say them).
_CONSTANT = ("model_dir", "device", "ema", "logger")


def configure(fmt: str = "auto", level: str = "info", stream: IO[str] | None = None) -> None:
    """Set up structlog and the stdlib root logger once, for the whole process. With JSON lines on
    the process's own stderr, file descriptor 2 itself is captured (capture_native_stderr)."""
    global _json
    console = fmt == "console" or (fmt == "auto" and (stream or sys.stderr).isatty())
    _json = not console
    if stream is None:
        stream = capture_native_stderr() if _json else sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Any
    if console:
        shared.append(_terse_evaluated)
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty(), sort_keys=False)
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    structlog.configure(
        # Events below the level are dropped first, before the timestamp and the rest are made
        # (a debug line per checkpoint would otherwise cost a catch-up of thousands visibly).
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
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


def _terse_evaluated(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """On a terminal, an `evaluated` line starts with the step and the metrics."""
    if event.get("event") == "evaluated":
        for key in _CONSTANT:
            event.pop(key, None)
    return event


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


#: TensorFlow's C++ (absl) log lines: `I0000 00:00:1796021023.728344   15408 cudart_stub.cc:31] message`.
_NATIVE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+)\] ?(.*)$")
_NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
#: Lines every CPU-only machine prints at error level, about a GPU it does not have: information.
_NO_GPU = ("cuInit", "Could not find cuda drivers", "cuda_platform", "Unable to register cu")
_capture: _NativeCapture | None = None


class _NativeCapture:
    """File descriptor 2 replaced by a pipe; each line written to it (TensorFlow's C++ logging, absl,
    warnings, anything) is read by a thread and re-emitted as a log event of a mapped level. Our
    own events go to the original stderr, which `stream` writes to."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.stream = os.fdopen(os.dup(self.saved), "w", buffering=1, encoding="utf-8", errors="replace")
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._reader = os.fdopen(read_end, "rb")
        self._thread = threading.Thread(target=self._pump, name="native-stderr", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def _pump(self) -> None:
        logger = logging.getLogger("native")
        for raw in self._reader:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.strip():
                level, fields = _native_event(line)
                logger.log(level, fields.pop("event"), extra=fields)

    def stop(self) -> None:
        """Put stderr back and let the thread re-emit what is still in the pipe."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)  # the pipe's last write end closes: the reader sees its end
        self._thread.join(timeout=2.0)


def _native_event(line: str) -> tuple[int, dict[str, Any]]:
    match = _NATIVE.match(line)
    if match is None:
        level = logging.WARNING if line.startswith(("WARNING", "Warning", "warning")) else logging.INFO
        if line.startswith(("Traceback", "ERROR", "Error")):
            level = logging.ERROR
        return level, {"event": line, "source": "stderr"}
    letter, source, message = match.groups()
    level = _NATIVE_LEVELS[letter]
    if any(marker in line for marker in _NO_GPU):
        level = logging.INFO
    return level, {"event": message, "source": source}


def capture_native_stderr() -> IO[str]:
    """Once per process: route file descriptor 2 through the log (JSON logs stay JSON on every
    line); returns the stream our own events are written to."""
    global _capture
    if _capture is None:
        _capture = _NativeCapture()
    return _capture.stream


def json_active() -> bool:
    """Whether this process logs JSON lines (configure() chose them)."""
    return _json
