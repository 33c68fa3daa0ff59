"""The evaluations table: one row per (model directory, checkpoint).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_dir", sa.String(length=4096), nullable=False),
        sa.Column("checkpoint", sa.String(length=4096), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("examples", sa.Integer(), nullable=True),
        sa.Column("ema", sa.Boolean(), nullable=True),
        sa.Column("restore_seconds", sa.Float(), nullable=True),
        sa.Column("eval_seconds", sa.Float(), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detected_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("evaluated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("status IN ('ok', 'missing', 'failed')", name=op.f("ck_evaluations_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint("model_dir", "checkpoint", name=op.f("uq_evaluations_model_dir_checkpoint")),
    )
    op.create_index(op.f("ix_evaluations_model_dir_step"), "evaluations", ["model_dir", "step"])


def downgrade() -> None:
    op.drop_index(op.f("ix_evaluations_model_dir_step"), table_name="evaluations")
    op.drop_table("evaluations")
