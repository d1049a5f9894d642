"""Each sweep result keeps the learned early warning's loss probability (null where no model scored it).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweep_results") as batch:  # batch: SQLite cannot alter tables in place
        batch.add_column(sa.Column("p_loss", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("sweep_results") as batch:
        batch.drop_column("p_loss")
