"""task: loading `module:NAME` and `file.py:NAME`, with a clear TaskError for every way it can fail."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from evaluator.errors import EXIT_CONFIG, TaskError
from evaluator.task import Task, batch_size_of, load_task
from tests.conftest import DIGITS_TASK


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_loads_the_digits_task_from_a_file() -> None:
    task = load_task(DIGITS_TASK)
    assert isinstance(task, Task)
    assert batch_size_of(task) == 512


def test_loads_from_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "my_eval_task.py", "class T:\n    def inference(self, f): return f\n"
                                        "    def validation_data(self): return ([[0.0]], [0])\nTASK = T()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("my_eval_task:TASK")
    assert task.validation_data() == ([[0.0]], [0])
    assert batch_size_of(task) is None


def test_a_class_is_instantiated(tmp_path: Path) -> None:
    path = write(tmp_path / "cls.py", "class T:\n    batch_size = 7\n    def inference(self, f): return f\n"
                                      "    def validation_data(self): return None\n")
    task = load_task(f"{path}:T")
    assert batch_size_of(task) == 7


def test_sibling_modules_are_importable(tmp_path: Path) -> None:
    write(tmp_path / "sibling_helper_mod.py", "VALUE = 41\n")
    path = write(tmp_path / "t.py", "import sibling_helper_mod\nclass T:\n"
                                    "    def inference(self, f): return sibling_helper_mod.VALUE + 1\n"
                                    "    def validation_data(self): return None\nTASK = T()\n")
    assert load_task(f"{path}:TASK").inference(None) == 42
    sys.modules.pop("sibling_helper_mod", None)


@pytest.mark.parametrize(("spec", "message"), [
    ("no_colon_here", "is not of the form package.module:NAME"),
    (":TASK", "is not of the form"),
    ("module:", "is not of the form"),
    ("definitely_not_a_module_xyz:TASK", "no module named 'definitely_not_a_module_xyz'"),
    ("missing/file.py:TASK", "file missing/file.py does not exist"),
])
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(TaskError, match=message) as info:
        load_task(spec)
    assert info.value.exit_code == EXIT_CONFIG


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.py", "x = 1\ndef oops(:\n")
    with pytest.raises(TaskError, match=r"syntax error in .*broken.py \(broken.py, line 2\)"):
        load_task(f"{path}:TASK")


def test_import_error_inside_the_task(tmp_path: Path) -> None:
    path = write(tmp_path / "imports.py", "import no_such_dependency_abc\n")
    with pytest.raises(TaskError, match="importing .* failed: ModuleNotFoundError: No module named 'no_such_dependency_abc'"):
        load_task(f"{path}:TASK")


def test_exception_at_import(tmp_path: Path) -> None:
    path = write(tmp_path / "raises.py", "raise RuntimeError('no GPU quota')\n")
    with pytest.raises(TaskError, match="RuntimeError: no GPU quota"):
        load_task(f"{path}:TASK")


def test_missing_attribute(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.py", "OTHER = 1\n")
    with pytest.raises(TaskError, match="has no attribute 'TASK'"):
        load_task(f"{path}:TASK")


def test_lacking_members(tmp_path: Path) -> None:
    path = write(tmp_path / "half.py", "class T:\n    def inference(self, f): return f\nTASK = T()\n")
    with pytest.raises(TaskError, match=r"TASK lacks validation_data\(\)"):
        load_task(f"{path}:TASK")


def test_class_whose_constructor_fails(tmp_path: Path) -> None:
    path = write(tmp_path / "ctor.py", "class T:\n    def __init__(self): raise ValueError('needs a config')\n")
    with pytest.raises(TaskError, match=r"T\(\) failed: ValueError: needs a config"):
        load_task(f"{path}:T")
