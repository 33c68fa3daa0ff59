"""Which packages the wheel holds: every package under evaluator/, found (a new subpackage cannot be
forgotten), and the Alembic environment of migrations/ shipped as evaluator.migrations, so a
non-editable install finds it. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

MIGRATIONS = "evaluator.migrations"

setup(
    packages=[
        *find_packages(include=["evaluator", "evaluator.*"]),
        *(MIGRATIONS + name[len("migrations"):] for name in find_packages(include=["migrations", "migrations.*"])),
    ],
    package_dir={MIGRATIONS: "migrations"},
    package_data={MIGRATIONS: ["script.py.mako"]},
)
