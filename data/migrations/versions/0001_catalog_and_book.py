"""Catalogue (spus, reviews), order lines, daily market snapshots and the pledged book.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spus",
        sa.Column("spu_id", sa.String(64), primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("category", sa.String(128)),
        sa.Column("brand", sa.String(128)),
        sa.Column("images", sa.Text, nullable=False, server_default="[]"),  # JSON list of paths
    )
    op.create_table(
        "reviews",
        # sha256 of (spu_id, created_at, text): the natural key, short enough for any index
        sa.Column("review_id", sa.String(64), primary_key=True),
        sa.Column("spu_id", sa.String(64), nullable=False, index=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("rating", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("spu_id", sa.String(64), nullable=False, index=True),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("unit_price", sa.Float, nullable=False),
        sa.Column("ordered_at", sa.DateTime, nullable=False),
        sa.Column("cancelled", sa.Boolean, nullable=False),
    )
    op.create_table(
        "market",
        sa.Column("spu_id", sa.String(64), primary_key=True),
        sa.Column("date", sa.Date, primary_key=True),
        sa.Column("price", sa.Float, nullable=False),
        sa.Column("units_sold", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "positions",
        sa.Column("position_id", sa.String(64), primary_key=True),
        sa.Column("loan_id", sa.String(64), nullable=False, index=True),
        sa.Column("borrower", sa.String(256), nullable=False),
        sa.Column("spu_id", sa.String(64), nullable=False, index=True),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("warehouse", sa.String(128), nullable=False),
        sa.Column("pledged_at", sa.Date, nullable=False),
        sa.Column("loan_amount", sa.Float, nullable=False),
        sa.Column("pledge_unit_price", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("positions", "market", "orders", "reviews", "spus"):
        op.drop_table(table)
