"""Where the restored averages came from: `ema_source` replaces the `ema` boolean.

Old rows keep what they said: ema true -> "tf1-names" (the only layout the evaluator read before:
`<variable>/ExponentialMovingAverage` by name), false -> "none", unknown stays unknown.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("ema_source", sa.String(length=32), nullable=True))
    op.execute("UPDATE evaluations SET ema_source = CASE WHEN ema THEN 'tf1-names' ELSE 'none' END "
               "WHERE ema IS NOT NULL")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("ema")


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("ema", sa.Boolean(), nullable=True))
    op.execute("UPDATE evaluations SET ema = (ema_source != 'none') WHERE ema_source IS NOT NULL")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("ema_source")
