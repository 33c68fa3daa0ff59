"""packaging: the wheel, installed into a fresh virtual environment that cannot see the checkout,
runs what the README tells a user to run: `watch --once` (a graph task and a Keras task), `report`,
`plot`, `db current`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env, read_rows, sqlite_url

pytestmark = pytest.mark.slow


def _packages_in_checkout() -> set[str]:
    """Every package the source tree has: evaluator/** and migrations/** (shipped as evaluator.migrations)."""
    found = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "evaluator").rglob("__init__.py")}
    found |= {"evaluator/" + str(p.parent.relative_to(ROOT)) for p in (ROOT / "migrations").rglob("__init__.py")}
    return {p for p in found if "__pycache__" not in p}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (found,) = dist.glob("evaluator-*.whl")
    return found


@pytest.fixture(scope="module")
def fresh_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed; its dependencies (TensorFlow...) are the
    test environment's, reached through a .pth file naming that site-packages alone, so neither the
    checkout nor its editable install is visible."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_the_wheel_holds_every_package_and_migration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    folders = {os.path.dirname(name) for name in names}
    assert _packages_in_checkout() <= folders, _packages_in_checkout() - folders
    migrations = {f"evaluator/migrations/versions/{p.name}" for p in (ROOT / "migrations" / "versions").glob("0*.py")}
    assert len(migrations) >= 6 and migrations <= names
    assert {"evaluator/migrations/env.py", "evaluator/migrations/script.py.mako", "evaluator/cli/__init__.py"} <= names
    assert not any(name.startswith(("tests/", "examples/", "bench/", "migrations/")) for name in names)
    assert not any(name.endswith(".whl") for name in names)


def test_a_fresh_install_runs_the_readme_commands(fresh_env: Path, tmp_path: Path) -> None:
    work = tmp_path / "user"  # the user's own directory: the examples copied there, not the checkout
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    python, evaluator = fresh_env / "bin" / "python", fresh_env / "bin" / "evaluator"
    env = cli_env()
    env.pop("PYTHONPATH", None)

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(evaluator), *args], capture_output=True, text=True, env=env, cwd=work,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    where = subprocess.run([str(python), "-c", "import evaluator; print(evaluator.__file__)"],
                           capture_output=True, text=True, env=env, cwd=work, check=True)
    assert where.stdout.strip().startswith(str(fresh_env)), where.stdout  # the installed copy

    for trainer, model_dir in (("digits", "graph_run"), ("keras", "keras_run")):
        subprocess.run([str(python), f"examples/{trainer}/train.py", model_dir, "--steps", "40", "--save-every", "20"],
                       check=True, capture_output=True, env=env, cwd=work, timeout=300)
    db = work / "evaluations.db"
    for task, model_dir in (("examples/digits/task.py:TASK", "graph_run"), ("examples/keras/task.py:TASK", "keras_run")):
        result = run("watch", model_dir, "--task", task, "--once", "--db", str(db), "--log-format", "json")
        assert result.returncode == 0, result.stderr[-3000:]
        rows = read_rows(db, work / model_dir)
        assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["accuracy"] > 0.2 for r in rows), rows
        assert (work / model_dir / "eval").is_dir() and (work / model_dir / "export" / "best").is_dir()

    report = run("report", "--db", str(db))
    assert report.returncode == 0, report.stderr
    assert "graph_run" in report.stdout and "keras_run" in report.stdout and "ok" in report.stdout
    picture = run("plot", "--db", str(db), "-o", "evaluations.png")
    assert picture.returncode == 0, picture.stderr
    assert (work / "evaluations.png").read_bytes()[:4] == b"\x89PNG"
    current = run("db", "current", "--db", sqlite_url(db))
    assert current.returncode == 0 and "up to date" in current.stdout, current.stdout + current.stderr
