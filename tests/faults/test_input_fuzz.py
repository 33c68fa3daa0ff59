"""Arbitrary input: state files, checkpoint names and command-line values never crash the evaluator.

Property-based (hypothesis): whatever the bytes, names or arguments, the only errors are the
project's own, and the CLI answers bad values with one line, exit code 2, and no write.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datetime import datetime, timezone

from evaluator import checkpoints
from evaluator.cli import main
from evaluator.errors import EvaluatorError
from evaluator.evaluation import MAX_STEP, Evaluation, Status
from evaluator.store import Store
from tests.conftest import error_lines, run_cli, sqlite_url


def fuzz(examples: int) -> settings:
    """Hypothesis settings: `examples` cases, no deadline (TensorFlow's parser), fixtures reused."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
_path_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


def quote(text: str) -> str:
    """A text-proto string literal for `text`."""
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


@fuzz(200)
@given(content=st.binary(max_size=400))
def test_any_bytes_in_the_state_file(tmp_path: Path, content: bytes) -> None:
    """Scenario 10a: arbitrary bytes as the state file"""
    (tmp_path / "checkpoint").write_bytes(content)
    try:
        state = checkpoints.read_state(str(tmp_path))
    except EvaluatorError:
        return
    root = os.path.realpath(tmp_path)
    for ckpt in state.checkpoints:
        assert os.path.commonpath([root, ckpt.path]) == root


@fuzz(300)
@given(paths=st.lists(_path_text, min_size=1, max_size=6))
def test_any_paths_in_a_valid_state_file(tmp_path: Path, paths: list[str]) -> None:
    """Scenario 10b: arbitrary checkpoint paths and names in a well-formed state file"""
    lines = [f"model_checkpoint_path: {quote(paths[-1])}"]
    lines += [f"all_model_checkpoint_paths: {quote(p)}" for p in paths]
    (tmp_path / "checkpoint").write_text("\n".join(lines) + "\n")
    try:
        state = checkpoints.read_state(str(tmp_path))
    except EvaluatorError:
        return
    root = os.path.realpath(tmp_path)
    for ckpt in state.checkpoints:
        assert os.path.commonpath([root, ckpt.path]) == root and ckpt.path != root
        assert ckpt.name_step == checkpoints.step_from_name(ckpt.name)
        assert checkpoints.at(root, ckpt.path) == ckpt
    steps = [c.name_step for c in state.checkpoints if c.name_step is not None]
    assert steps == sorted(steps)  # oldest step first
    assert len(state.checkpoints) + len(state.ignored) <= len(paths) + 1


@fuzz(500)
@given(name=_path_text)
def test_any_checkpoint_name(name: str) -> None:
    """Scenario 10c: arbitrary checkpoint names -> step and family"""
    step = checkpoints.step_from_name(name)
    assert step is None or (step >= 0 and os.path.basename(name).endswith(f"-{name.rsplit('-', 1)[1]}"))
    family = checkpoints.family(name)
    assert checkpoints.step_from_name(family) is None or family != name


@fuzz(100)
@given(names=st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b
                                                                  and b not in (b".", b"..")), max_size=5),
       steps=st.lists(st.integers(min_value=0, max_value=10**40), min_size=1, max_size=5))
def test_any_file_names_and_step_numbers_on_disk(tmp_path: Path, names: list[bytes], steps: list[int]) -> None:
    """Scenario 10d: file names of arbitrary bytes and steps of any size in a model directory"""
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # hypothesis runs many examples in one tmp_path
    for name in names:
        (Path(os.fsdecode(bytes(root))) / os.fsdecode(name + b".index")).write_bytes(b"x")
    for step in steps:
        (root / f"model.ckpt-{step}.index").write_bytes(b"x")
    found = checkpoints.scan(str(root), {"model.ckpt"} | {checkpoints.family(os.fsdecode(n)) for n in names})
    for ckpt in found:
        ckpt.name.encode("utf-8")  # every key is text
        assert ckpt.name_step is None or 0 <= ckpt.name_step <= MAX_STEP
        assert checkpoints.fingerprint(ckpt.path) is not None
    by_name = {c.name: c.name_step for c in found}
    for step in steps:
        assert by_name[f"model.ckpt-{step}"] == (step if step <= MAX_STEP else None)


@fuzz(40)
@given(step=st.integers(min_value=0, max_value=10**30))
def test_any_step_number_is_stored_or_dropped_never_a_crash(step_store: Store, step: int) -> None:
    """Scenario 10e: a checkpoint named with a step of any size gets a row"""
    name = f"model.ckpt-{step}"
    when = datetime.now(timezone.utc)
    evaluation = Evaluation("/m", name, checkpoints.step_from_name(name), Status.OK, when, fingerprint=str(step))
    step_store.record(evaluation)
    assert name in step_store.recorded("/m", "default")


@pytest.fixture(scope="module")
def step_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store.open(sqlite_url(tmp_path_factory.mktemp("steps") / "e.db"), create=True)
    store.upgrade()
    return store


# -- the command line --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "evaluations.db"
    with Store.open(sqlite_url(path), create=True) as store:
        store.upgrade()
    # (released: else closing the pooled connection later would checkpoint the WAL into the file)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_rejected(args: list[str], capsys: pytest.CaptureFixture[str], database: Path, before: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, (args, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluator: error: "), (args, err)
    assert out == ""
    assert digest(database) == before


@fuzz(80)
@given(value=st.one_of(st.integers(max_value=0).map(str), st.integers(min_value=10**9 + 1).map(str),
                       _path_text.filter(lambda s: not s.strip().isdigit())))
def test_bad_last_values(value: str, capsys: pytest.CaptureFixture[str], database: Path) -> None:
    """CLI fuzz: `report --last` with negative, zero, non-integer and huge values"""
    before = digest(database)
    assert_rejected(["report", "--db", sqlite_url(database), "--last", value], capsys, database, before)


@fuzz(60)
@given(value=_path_text.filter(lambda s: s not in ("table", "json", "csv")))
def test_bad_formats(value: str, capsys: pytest.CaptureFixture[str], database: Path) -> None:
    """CLI fuzz: `report --format` with unknown formats"""
    before = digest(database)
    assert_rejected(["report", "--db", sqlite_url(database), "--format", value], capsys, database, before)


@fuzz(150)
@given(url=st.one_of(_path_text, st.from_regex(r"[a-z+]{1,12}://[\x21-\x7e]{0,30}", fullmatch=True)))
def test_bad_database_urls(url: str, capsys: pytest.CaptureFixture[str], database: Path,
                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI fuzz: `report --db` and `db current --db` with malformed or unusable URLs"""
    monkeypatch.chdir(tmp_path)  # a relative sqlite path would land here, and must not be created
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # no default database to fall back on
    monkeypatch.delenv("EVALUATOR_DB", raising=False)
    before = digest(database)
    listing = sorted(os.listdir(tmp_path))
    for command in (["report"], ["db", "current"]):
        assert_rejected([*command, "--db", url], capsys, database, before)
    assert sorted(os.listdir(tmp_path)) == listing


@pytest.mark.slow
def test_a_task_with_a_syntax_error_writes_nothing(tmp_path: Path, trained_dir: Path, database: Path,
                                                   record_property: Callable[[str, object], None]) -> None:
    """CLI fuzz: `watch --task` naming a file with a syntax error"""
    (tmp_path / "task.py").write_text("class Task:\n    def inference(self, x)\n        return x\n")
    model_dir = tmp_path / "model"
    shutil.copytree(trained_dir, model_dir)
    copy = tmp_path / "copy.db"
    shutil.copy(database, copy)
    before = digest(copy)
    for db in (copy, tmp_path / "new.db"):
        result = run_cli("watch", str(model_dir), "--task", f"{tmp_path}/task.py:TASK", "--once",
                         "--db", sqlite_url(db))
        lines = error_lines(result.stderr)
        assert result.returncode == 2 and len(lines) == 1 and "syntax error" in lines[0]
    assert digest(copy) == before and not (tmp_path / "new.db").exists()
    record_property("detail", lines[0])


def test_good_values_are_accepted(capsys: pytest.CaptureFixture[str], database: Path) -> None:
    """CLI fuzz: the control: the same commands with good values succeed, and write nothing either"""
    before = digest(database)
    for args in (["report", "--last", "1", "--format", "json"], ["report", "--format", "csv"], ["db", "current"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--db", sqlite_url(database)])
        assert exit_info.value.code == 0, capsys.readouterr().err
    assert digest(database) == before
