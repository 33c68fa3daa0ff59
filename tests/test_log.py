"""log: JSON lines off a terminal, console on one, the stdlib's loggers routed through the same chain."""

from __future__ import annotations

import io
import json
import logging

import structlog

from evaluator import log


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    log.configure("auto", "info", stream=out)
    log.get(model_dir="/m").info("evaluated", checkpoint="model.ckpt-1", accuracy=0.9)
    logging.getLogger("alembic.runtime.migration").warning("from the stdlib")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "evaluated" and first["model_dir"] == "/m" and first["accuracy"] == 0.9
    assert first["level"] == "info" and first["timestamp"].endswith("Z")
    assert second["event"] == "from the stdlib" and second["logger"] == "alembic.runtime.migration"


def test_console_on_a_terminal_and_levels() -> None:
    out = FakeTTY()
    log.configure("auto", "warning", stream=out)
    log.get().info("hidden")
    log.get().warning("shown", checkpoint="c")
    text = out.getvalue()
    assert "hidden" not in text and "shown" in text and not text.lstrip().startswith("{")


def test_exceptions_are_one_json_object() -> None:
    out = io.StringIO()
    log.configure("json", "info", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        log.get().exception("evaluation raised")
    (line,) = out.getvalue().splitlines()
    entry = json.loads(line)
    assert "ValueError: boom" in entry["exception"]


def teardown_module() -> None:
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
