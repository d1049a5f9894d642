"""Sweep runs: a sweep asked for and not yet complete (running, waiting for the lock, or failed), shared by
every worker and scheduler through the store instead of one process's memory.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweep_runs",
        sa.Column("sweep_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),       # running | waiting | failed
        sa.Column("holder", sa.String(128), nullable=False),       # host:pid of the process running it
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("sweep_runs")
