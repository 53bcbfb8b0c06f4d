"""populations and verdicts: per-member state, the best member per epoch, error ratios

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("members", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("marker_baseline_mse", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("error_ratio", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("marker_error_ratio", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("verdict", sa.String(length=16), nullable=True))
    with op.batch_alter_table("epoch_losses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("member", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("epoch_losses", schema=None) as batch_op:
        batch_op.drop_column("member")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("verdict")
        batch_op.drop_column("marker_error_ratio")
        batch_op.drop_column("error_ratio")
        batch_op.drop_column("marker_baseline_mse")
        batch_op.drop_column("members")
