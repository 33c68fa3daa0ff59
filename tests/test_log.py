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


def test_a_terminal_sees_the_step_and_metrics_first_without_the_fields_that_never_change() -> None:
    out = FakeTTY()
    log.configure("console", "info", stream=out)
    log.get(model_dir="/data/run").info("evaluated", step=20, checkpoint="model.ckpt-20", status="ok", accuracy=0.9,
                                       loss=0.3, ema="tf1-names", device="cpu", restore_seconds=0.01)
    log.get(model_dir="/data/run").info("checkpoint detected", checkpoint="model.ckpt-40")
    structlog.reset_defaults()
    evaluated, detected = out.getvalue().splitlines()
    plain = structlog.dev.strip_ansi(evaluated) if hasattr(structlog.dev, "strip_ansi") else evaluated
    assert "/data/run" not in plain and "tf1-names" not in plain and "cpu" not in plain
    assert "step" in plain and plain.index("step") < plain.index("accuracy") < plain.index("restore_seconds")
    assert "/data/run" in detected  # other events keep where they come from


def test_the_native_lines_of_tensorflow_get_a_level() -> None:
    level, fields = log._native_event(
        "E0000 00:00:1796021023.728344   15408 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)")
    assert (level, fields["source"]) == (logging.INFO, "cuda_platform.cc:52")  # a CPU-only machine: information
    level, fields = log._native_event("W0000 00:00:1.0   1 loader.cc:10] slow")
    assert (level, fields["event"]) == (logging.WARNING, "slow")
    assert log._native_event("Traceback (most recent call last):")[0] == logging.ERROR
