"""sweeps: a grid of run configs created together; runs.sweep_id

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("grid", sa.JSON(), nullable=False),
        sa.Column("n_runs", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sweeps_created_at_id", "sweeps", ["created_at", "id"])
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sweep_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_runs_sweep_id", ["sweep_id"])
        batch_op.create_foreign_key(
            "fk_runs_sweep_id", "sweeps", ["sweep_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_runs_sweep_id", type_="foreignkey")
        batch_op.drop_index("ix_runs_sweep_id")
        batch_op.drop_column("sweep_id")
    op.drop_index("ix_sweeps_created_at_id", table_name="sweeps")
    op.drop_table("sweeps")
