"""The fault-injection suite: helpers, and one summary line per scenario at the end of the run.

Each test's docstring starts with "Scenario N: what is done to the evaluator"; tests add what they
measured with `record_property("detail", ...)`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DIGITS, train

_outcomes: dict[str, tuple[str, str, str]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    doc = (getattr(item, "obj", None).__doc__ or item.name).strip().splitlines()[0]  # type: ignore[union-attr]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        detail = dict(item.user_properties).get("detail", "")
        if report.skipped and isinstance(report.longrepr, tuple):
            detail = report.longrepr[2]
        _outcomes[item.nodeid] = (doc, report.outcome, str(detail))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _outcomes:
        return
    terminalreporter.section("fault-injection scenarios")
    for title, outcome, detail in sorted(_outcomes.values(), key=lambda entry: _order(entry[0])):
        terminalreporter.write_line(f"{outcome.upper():7} {title}" + (f" — {detail}" if detail else ""))


def _order(title: str) -> tuple[int, str]:
    match = re.match(r"Scenario (\d+)", title)
    return (int(match.group(1)), title) if match else (99, title)


def renamed_task(directory: Path) -> str:
    """A task file whose graph puts the digits layers under `encoder/`: it fits no digits checkpoint."""
    task = directory / "renamed.py"
    task.write_text(
        f"import sys\nsys.path.insert(0, {str(DIGITS)!r})\nimport tensorflow as tf\nimport digits_data, digits_model\n"
        "class Renamed:\n"
        "    def inference(self, features):\n"
        "        with tf.compat.v1.variable_scope('encoder'):\n"
        "            return digits_model.inference(features)\n"
        "    def validation_data(self):\n"
        "        return digits_data.validation()\n"
        "TASK = Renamed()\n")
    return f"{task}:TASK"


def write_state(model_dir: Path, names: list[str]) -> None:
    """Rewrite the state file as TensorFlow does: a temporary file renamed over `checkpoint`."""
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    temporary = model_dir / f"checkpoint.tmp{uuid.uuid4().hex}"
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, model_dir / "checkpoint")


def copy_checkpoint(source: Path, prefix: str, target_dir: Path, name: str) -> None:
    """Copy checkpoint `prefix` of `source` (index, data, meta) into `target_dir` as `name`."""
    for path in source.glob(prefix + ".*"):
        shutil.copy(path, target_dir / (name + path.name[len(prefix):]))


def link_all(staged: Path, model_dir: Path) -> list[str]:
    """Hard-link every checkpoint file of `staged` into `model_dir` at once (not the state file);
    returns the checkpoint names, oldest first."""
    for path in staged.iterdir():
        if path.name != "checkpoint":
            os.link(path, model_dir / path.name)
    steps = sorted(int(p.name.split("-")[-1].split(".")[0]) for p in staged.glob("model.ckpt-*.index"))
    return [f"model.ckpt-{step}" for step in steps]


@pytest.fixture(scope="session")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 real checkpoints (steps 1..200) in a directory nobody watches, to move in as a burst."""
    directory = tmp_path_factory.mktemp("staged") / "model"
    train(directory, steps=200, save_every=1, max_to_keep=200, relative_paths=True)
    return directory


class Tmpfs:
    """A small tmpfs mounted on a test's directory: a disk that fills up, or turns read-only."""

    def __init__(self, where: Path, size: str) -> None:
        self.where = where
        where.mkdir(parents=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.where)], check=True)

    def fill(self) -> Path:
        """Write a file until the disk is full; returns it (delete it to free the space)."""
        filler = self.where / "filler"
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
        return filler

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.where)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    mounted = Tmpfs(tmp_path / "disk", size="2m")
    yield mounted
    mounted.unmount()
