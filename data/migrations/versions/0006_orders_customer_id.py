"""Each order line may name its buyer (null for guest orders and for catalogues without buyers): the
learned haircut reads how many buyers an SPU has and whether they come back.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("customer_id", sa.String))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("customer_id")
