"""Alembic migrations for the evaluator's database (shipped in the wheel as evaluator.migrations)."""
