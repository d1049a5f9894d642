"""Health sweeps: one row per sweep, its per-position results, its alerts, and the scheduler lock.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("sweep_id", sa.String(64), primary_key=True),  # "sweep-<as_of>": one sweep per as-of date
        sa.Column("as_of", sa.Date, nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),       # completed (only complete sweeps are written)
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("completed_at", sa.DateTime, nullable=False),
        sa.Column("n_positions", sa.Integer, nullable=False),
        sa.Column("n_alerts", sa.Integer, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),            # JSON: totals, grade and action counts
    )
    op.create_table(
        "sweep_results",
        sa.Column("sweep_id", sa.String(64), primary_key=True),
        sa.Column("position_id", sa.String(64), primary_key=True),
        sa.Column("spu_id", sa.String(64), nullable=False),
        sa.Column("unit_value", sa.Float),
        sa.Column("value_source", sa.String(16), nullable=False),
        sa.Column("value_low", sa.Float),
        sa.Column("value_high", sa.Float),
        sa.Column("collateral_value", sa.Float),
        sa.Column("ltv", sa.Float),
        sa.Column("price_change", sa.Float),
        sa.Column("velocity_trend", sa.Float),
        sa.Column("volatility", sa.Float),
        sa.Column("days_to_liquidate", sa.Float),
        sa.Column("health", sa.Float, nullable=False),
        sa.Column("grade", sa.String(1), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),            # JSON list of reason codes
    )
    op.create_index("ix_sweep_results_position", "sweep_results", ["position_id"])
    op.create_table(
        "alerts",
        sa.Column("sweep_id", sa.String(64), primary_key=True),
        sa.Column("position_id", sa.String(64), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("previous_action", sa.String(16)),
        sa.Column("reasons", sa.Text, nullable=False),
    )
    op.create_index("ix_alerts_position", "alerts", ["position_id"])
    op.create_table(
        "locks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("locks", "alerts", "sweep_results", "sweeps"):
        op.drop_table(table)
