"""cli: help for every command, one-line errors with exit code 2, and no TensorFlow where not needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from evaluator.cli import cli
from tests.conftest import DIGITS_TASK, ROOT, cli_env, read_rows, run_cli, sqlite_url


def all_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += all_commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: " ".join(c) or "evaluator")
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = subprocess.run([sys.executable, "-m", "evaluator", *command, "--help"], capture_output=True,
                            text=True, env=cli_env(), cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage: evaluator" in result.stdout
    assert len(result.stdout.splitlines()) > 5


def test_command_help_has_examples() -> None:
    for name in ("watch", "report", "retry"):
        assert "Examples:" in (cli.commands[name].help or "")


IMPORTS_TF = """
import sys, io, contextlib
from evaluator.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(any(module in sys.modules for module in ("tensorflow", "s3fs", "gcsfs")))
"""


@pytest.mark.parametrize("args", [
    ["report", "--last", "5"], ["report", "--format", "json"], ["report", "--help"], ["--help"],
    ["watch", "--help"], ["db", "upgrade"], ["db", "current"], ["retry", "--model-dir", "/tmp"],
    ["report", "--model-dir", "s3://bucket/run/"], ["retry", "--model-dir", "gs://bucket/run"],
], ids=lambda a: " ".join(a))
def test_commands_that_do_not_evaluate_do_not_import_tensorflow(args: list[str], db: Path) -> None:
    run_cli("db", "upgrade", "--db", sqlite_url(db))
    result = subprocess.run([sys.executable, "-c", IMPORTS_TF, *args, "--db", sqlite_url(db)]
                            if "--help" not in args else [sys.executable, "-c", IMPORTS_TF, *args],
                            capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    """Exit 2 and one error: `evaluator: error: ...`, or, where `watch` logs JSON (stderr not a
    terminal), an `error` event among lines that are every one of them JSON."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if any(line.startswith("{") for line in lines):
        events = [json.loads(line) for line in lines]  # every line: not one is left plain text
        errors = [event["error"] for event in events if event["event"] == "error"]
    else:
        errors = [line for line in lines if line.startswith("evaluator: error: ")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "fragment"), [
    (["report", "--last", "-1"], "Invalid value for '--last': -1 is not in the range 1<=x<=1000000000"),
    (["report", "--last", "zero"], "'zero' is not a valid integer"),
    (["report", "--format", "xml"], "'xml' is not one of 'table', 'json', 'csv'"),
    (["report", "--db", "::not a url::"], "is not a database URL"),
    (["report", "--db", "sqlite:////nonexistent/dir/e.db"], "no database at /nonexistent/dir/e.db"),
    (["db", "current", "--db", "mysql+nosuchdriver://x/y"], "unknown database kind"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["watch", "."], "give --task SPEC (the model and data in Python), or a no-code mode"),
    (["watch", ".", "--task", "x:Y", "--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'gpu'"),
    (["watch", ".", "--task", "x:Y", "--metric", "top5"], "'top5' is not a built-in metric; they are accuracy"),
    (["watch", ".", "--task", "x:Y", "--metric", "top_k_accuracy:0"], "top_k_accuracy:K"),
    (["watch", ".", "--task", "x:Y", "--idle-timeout", "soon"], "'soon' is not a duration (e.g. 90, 90s, 15m, 2h)"),
    (["watch", ".", "--task", "x:Y", "--idle-timeout", "-5m"], "a duration is a positive number"),
])
def test_bad_arguments(args: list[str], fragment: str) -> None:
    one_line_error(run_cli(*args), fragment)


def test_watch_bad_inputs_write_nothing(tmp_path: Path, trained_dir: Path, db: Path) -> None:
    (tmp_path / "syntax.py").write_text("def broken(:\n")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "garbage.db").write_bytes(b"not sqlite " * 400)
    base = ["--db", sqlite_url(db), "--once"]
    cases = [
        (["watch", str(tmp_path / "missing"), "--task", DIGITS_TASK, *base], "does not exist (pass --wait-for-dir"),
        (["watch", str(tmp_path / "notes.txt"), "--task", DIGITS_TASK, *base], "is a file"),
        (["watch", str(trained_dir), "--task", "no-colon", *base], "is not of the form package.module:NAME"),
        (["watch", str(trained_dir), "--task", f"{tmp_path}/syntax.py:TASK", *base], "syntax error in"),
        (["watch", str(trained_dir), "--task", f"{DIGITS_TASK}X", *base], "has no attribute 'TASKX'"),
        (["watch", str(trained_dir), "--task", DIGITS_TASK, "--db", "postgresql+pg8000://", "--once"],
         "the driver for 'postgresql+pg8000' is not installed"),
        (["watch", str(trained_dir), "--task", DIGITS_TASK, "--db", sqlite_url(tmp_path / "garbage.db"), "--once"],
         "file is not a database"),
        (["watch", str(trained_dir), "--task", DIGITS_TASK, "--db", "not a url", "--once"], "is not a database URL"),
        (["watch", str(trained_dir), "--task", DIGITS_TASK, "--metric", "mae", *base],
         "metric 'mae' (mae) does not apply to a classification task (defaults there: accuracy, loss)"),
        (["watch", str(trained_dir), "--task", DIGITS_TASK, "--best-metric", "f1", *base],
         "--best-metric f1: this task computes accuracy, loss"),
        (["watch", str(trained_dir), "--task", f"{ROOT / 'examples' / 'keras' / 'task.py'}:TASK", "--export", "frozen",
          *base], "--export frozen writes a frozen tf.compat.v1 GraphDef: it is for graph tasks"),
    ]
    for args, fragment in cases:
        one_line_error(run_cli(*args), fragment)
    assert not db.exists()  # a configuration error writes nothing, not even an empty database
    assert not (trained_dir / ".evaluator").exists()  # nor pins: those made before the error are let go


def test_gpu_requested_on_a_machine_without_one(trained_dir: Path, db: Path) -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    result = run_cli("watch", str(trained_dir), "--task", DIGITS_TASK, "--db", sqlite_url(db), "--once",
                     "--device", "gpu")
    one_line_error(result, "--device gpu: TensorFlow sees no GPU")
    assert read_rows(db) == []


def test_db_upgrade_and_current(db: Path) -> None:
    from evaluator.store import Store

    url, head = sqlite_url(db), Store.head_revision()
    first = run_cli("db", "upgrade", "--db", url)
    assert first.returncode == 0 and f"schema at revision {head} (upgraded from an empty database)" in first.stdout
    again = run_cli("db", "upgrade", "--db", url)
    assert "already up to date" in again.stdout
    current = run_cli("db", "current", "--db", url)
    assert current.returncode == 0 and f"revision {head}, up to date" in current.stdout


def test_db_current_says_an_upgrade_is_needed_with_its_own_exit_code(db: Path) -> None:
    """Not 1, which is a crash: 5, documented, so a script can tell the two apart."""
    from alembic import command

    from evaluator.store import Store, alembic_config

    with Store.open(sqlite_url(db), create=True) as store, store.engine.begin() as connection:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0005")
    current = run_cli("db", "current", "--db", sqlite_url(db))
    assert current.returncode == 5, current.stdout + current.stderr
    assert "revision 0005, needs `evaluator db upgrade`" in current.stdout
    assert "| 5 | `db current`" in (ROOT / "README.md").read_text()


def test_db_url_from_the_environment(db: Path) -> None:
    result = run_cli("db", "upgrade", env=cli_env(EVALUATOR_DB=sqlite_url(db)))
    assert result.returncode == 0 and db.exists()


def test_report_on_an_empty_database(db: Path) -> None:
    run_cli("db", "upgrade", "--db", sqlite_url(db))
    table = run_cli("report", "--db", sqlite_url(db))
    assert table.returncode == 0 and table.stdout == "" and "no evaluations recorded" in table.stderr
    assert json.loads(run_cli("report", "--db", sqlite_url(db), "--format", "json").stdout) == []


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("evaluator, version ")


def test_a_report_piped_into_head_exits_quietly(db: Path) -> None:
    """`evaluator report | head`: the closed pipe is not a crash (exit 0, nothing on stderr)."""
    from evaluator.evaluation import Evaluation, Status
    from evaluator.store import Store
    from datetime import datetime, timezone

    with Store.open(sqlite_url(db), create=True) as store:
        store.upgrade()
        now = datetime.now(timezone.utc)
        store.record_many(Evaluation("/m", f"m-{i}", i, Status.OK, now, accuracy=0.5, loss=1.0, fingerprint="f")
                          for i in range(3000))
    done = subprocess.run(f"{sys.executable} -m evaluator report --db {sqlite_url(db)} --format json --last 100000 "
                          "| head -3; exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.count("\n") == 3
    assert "Traceback" not in done.stderr and "error" not in done.stderr


def test_a_task_with_neither_model_nor_inference_says_both(tmp_path: Path, trained_dir: Path, db: Path) -> None:
    task = tmp_path / "typo.py"
    task.write_text("class T:\n    def modle(self): pass\n    def validation_data(self): pass\nTASK = T()\n")
    result = run_cli("watch", str(trained_dir), "--task", f"{task}:TASK", "--once", "--db", sqlite_url(db))
    one_line_error(result, "TASK has neither model() (TF2: returns the Keras model or tf.Module) nor inference")
    misspelt = run_cli("watch", str(trained_dir), "--task", f"{task}:TAKS", "--once", "--db", sqlite_url(db))
    one_line_error(misspelt, "has no attribute 'TAKS' (it has T, TASK)")


def test_report_of_a_directory_without_rows_and_db_as_a_path(tmp_path: Path, trained_dir: Path) -> None:
    """--db may be a plain path to a .db file; --model-dir with no rows says so with exit status 4."""
    path = tmp_path / "plain.db"
    assert run_cli("db", "upgrade", "--db", str(path)).returncode == 0
    assert path.is_file()
    empty = run_cli("report", "--db", str(path), "--model-dir", str(trained_dir), "--format", "json")
    assert empty.returncode == 4 and json.loads(empty.stdout) == []
    assert f"no evaluations recorded for {trained_dir}" in empty.stderr
    everything = run_cli("report", "--db", str(path))
    assert everything.returncode == 0 and "no evaluations recorded in" in everything.stderr
