"""packaging: a non-editable install (the wheel) carries the migrations and runs `db upgrade`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env, sqlite_url

pytestmark = pytest.mark.slow


def test_the_wheel_ships_the_migrations_and_they_run(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("evaluator-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"evaluator/migrations/env.py", "evaluator/migrations/script.py.mako",
            "evaluator/migrations/versions/0001_evaluations.py",
            "evaluator/migrations/versions/0002_best_accuracy_index.py",
            "evaluator/migrations/versions/0003_name_fingerprint_claims.py",
            "evaluator/migrations/versions/0004_ema_source.py", "evaluator/migrations/versions/0005_metrics.py", "evaluator/migrations/versions/0006_workers.py", "evaluator/cli.py"} <= names
    assert not any(name.startswith(("tests/", "examples/")) for name in names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = cli_env(PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import evaluator; print(evaluator.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the source tree
    db = tmp_path / "e.db"
    result = subprocess.run([sys.executable, "-m", "evaluator", "db", "upgrade", "--db", sqlite_url(db)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "schema at revision 0006" in result.stdout
