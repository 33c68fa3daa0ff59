"""Task-defined metrics and several validation sets: a `metrics` table, one row per evaluation,
validation set and metric.

Every existing row's accuracy, loss and examples are copied into it under the set "validation" (the
name a task's only set has), so old and new rows read alike; the columns stay, holding the default
(first) set's figures.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("goal", sa.String(length=8), nullable=True),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], name=op.f("fk_metrics_evaluation_id_evaluations"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metrics")),
        sa.UniqueConstraint("evaluation_id", "dataset", "name", name=op.f("uq_metrics_evaluation_id_dataset_name")),
    )
    op.create_index(op.f("ix_metrics_dataset_name_value"), "metrics", ["dataset", "name", "value"], unique=False)
    for column, goal in (("accuracy", "'max'"), ("loss", "'min'"), ("examples", "NULL")):
        op.execute(f"INSERT INTO metrics (evaluation_id, dataset, name, value, goal) "
                   f"SELECT id, 'validation', '{column}', {column}, {goal} FROM evaluations "
                   f"WHERE status = 'ok' AND {column} IS NOT NULL ORDER BY id")


def downgrade() -> None:
    op.drop_index(op.f("ix_metrics_dataset_name_value"), table_name="metrics")
    op.drop_table("metrics")
