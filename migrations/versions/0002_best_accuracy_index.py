"""An index for each model directory's best accuracy, so `report` need not read every row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_evaluations_model_dir_status_accuracy"), "evaluations",
                    ["model_dir", "status", "accuracy"])


def downgrade() -> None:
    op.drop_index(op.f("ix_evaluations_model_dir_status_accuracy"), table_name="evaluations")
