"""`report` at any size of the history: `series`, the metrics each evaluation has, and indexes.

`series` holds one row per (model directory, evaluation name, validation set, metric) that rows in
`metrics` have; each metric row points at its own (`metrics.series_id`), so one evaluation's best by
any metric is read from the index (series_id, value) instead of every row, and `report` checks
--metric and --dataset against a few `series` rows instead of every metric. Both are filled from
the rows already there. On `evaluations`: (model_dir, name, step, id) for the last rows by step,
(model_dir, name, id) for the newest row, (model_dir, name, status, loss) for the lowest loss.
The index (dataset, name, value) on `metrics`, which the report no longer uses, goes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_dir", sa.String(length=4096), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("dataset", sa.String(length=255), nullable=False),
        sa.Column("metric", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("model_dir", "name", "dataset", "metric", name=op.f("uq_series_model_dir_name_dataset_metric")),
    )
    op.add_column("metrics", sa.Column("series_id", sa.Integer(), nullable=True))
    op.drop_index(op.f("ix_metrics_dataset_name_value"), table_name="metrics")
    op.execute("INSERT INTO series (model_dir, name, dataset, metric) "
               "SELECT DISTINCT e.model_dir, e.name, m.dataset, m.name FROM metrics m "
               "JOIN evaluations e ON e.id = m.evaluation_id")
    if op.get_bind().dialect.name == "postgresql":  # a join, not a subquery per row
        op.execute("UPDATE metrics SET series_id = s.id FROM evaluations e, series s "
                   "WHERE e.id = metrics.evaluation_id AND s.model_dir = e.model_dir AND s.name = e.name "
                   "AND s.dataset = metrics.dataset AND s.metric = metrics.name")
    else:
        op.execute("UPDATE metrics SET series_id = (SELECT s.id FROM evaluations e JOIN series s "
                   "ON s.model_dir = e.model_dir AND s.name = e.name "
                   "WHERE e.id = metrics.evaluation_id AND s.dataset = metrics.dataset AND s.metric = metrics.name)")
    op.create_index(op.f("ix_metrics_series_id_value"), "metrics", ["series_id", "value"], unique=False)
    op.drop_index(op.f("ix_evaluations_model_dir_name_step"), table_name="evaluations")
    op.create_index(op.f("ix_evaluations_model_dir_name_step_id"), "evaluations", ["model_dir", "name", "step", "id"],
                    unique=False)
    op.create_index(op.f("ix_evaluations_model_dir_name_id"), "evaluations", ["model_dir", "name", "id"], unique=False)
    op.create_index(op.f("ix_evaluations_model_dir_name_status_loss"), "evaluations",
                    ["model_dir", "name", "status", "loss"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_evaluations_model_dir_name_status_loss"), table_name="evaluations")
    op.drop_index(op.f("ix_evaluations_model_dir_name_id"), table_name="evaluations")
    op.drop_index(op.f("ix_evaluations_model_dir_name_step_id"), table_name="evaluations")
    op.create_index(op.f("ix_evaluations_model_dir_name_step"), "evaluations", ["model_dir", "name", "step"], unique=False)
    op.drop_index(op.f("ix_metrics_series_id_value"), table_name="metrics")
    op.create_index(op.f("ix_metrics_dataset_name_value"), "metrics", ["dataset", "name", "value"], unique=False)
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("series_id")
    op.drop_table("series")
