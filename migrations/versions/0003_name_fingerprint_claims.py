"""Evaluation names, checkpoint fingerprints and claims.

The key of a row grows from (model_dir, checkpoint) to (model_dir, name, checkpoint, fingerprint):
several evaluations of one checkpoint (`--name`) live side by side, and a training restarted from
scratch, which writes the same checkpoint names again, gets new rows. Existing rows keep their
values: name "default", fingerprint "" (unknown: such a row stands for whatever the name holds).
`step` becomes a 64-bit integer on every backend. `claims` holds the checkpoints being evaluated.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("name", sa.String(length=255), server_default="default", nullable=False))
        batch.add_column(sa.Column("fingerprint", sa.String(length=64), server_default="", nullable=False))
        batch.add_column(sa.Column("settings", sa.Text(), nullable=True))
        batch.alter_column("step", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=True)
        batch.drop_constraint("uq_evaluations_model_dir_checkpoint", type_="unique")
        batch.create_unique_constraint(
            "uq_evaluations_model_dir_name_checkpoint_fingerprint", ["model_dir", "name", "checkpoint", "fingerprint"]
        )
        batch.drop_index("ix_evaluations_model_dir_step")
        batch.drop_index("ix_evaluations_model_dir_status_accuracy")
        batch.create_index("ix_evaluations_model_dir_name_step", ["model_dir", "name", "step"])
        batch.create_index("ix_evaluations_model_dir_name_status_accuracy",
                           ["model_dir", "name", "status", "accuracy"])
    op.create_table(
        "claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_dir", sa.String(length=4096), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("checkpoint", sa.String(length=4096), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claims")),
        sa.UniqueConstraint("model_dir", "name", "checkpoint", "fingerprint",
                            name=op.f("uq_claims_model_dir_name_checkpoint_fingerprint")),
    )
    op.create_index(op.f("ix_claims_owner"), "claims", ["owner"])


def downgrade() -> None:
    """Back to one row per (model_dir, checkpoint): other names' rows and older fingerprints are dropped."""
    op.drop_index(op.f("ix_claims_owner"), table_name="claims")
    op.drop_table("claims")
    op.execute(
        "DELETE FROM evaluations WHERE name != 'default' OR id NOT IN "
        "(SELECT MAX(id) FROM evaluations GROUP BY model_dir, checkpoint)"
    )
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_index("ix_evaluations_model_dir_name_status_accuracy")
        batch.drop_index("ix_evaluations_model_dir_name_step")
        batch.create_index("ix_evaluations_model_dir_status_accuracy", ["model_dir", "status", "accuracy"])
        batch.create_index("ix_evaluations_model_dir_step", ["model_dir", "step"])
        batch.drop_constraint("uq_evaluations_model_dir_name_checkpoint_fingerprint", type_="unique")
        batch.create_unique_constraint("uq_evaluations_model_dir_checkpoint", ["model_dir", "checkpoint"])
        batch.alter_column("step", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=True)
        batch.drop_column("settings")
        batch.drop_column("fingerprint")
        batch.drop_column("name")
