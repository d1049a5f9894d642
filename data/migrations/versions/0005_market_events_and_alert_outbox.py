"""Real-time health: positions re-scored when their SPU's market moves, each position's latest action, and
the alert outbox every alert (sweep or market event) is delivered and polled from.

    health_events   seq, event_id, position_id, spu_id, as_of, trigger (market), observation (JSON: the
                    observation that moved the SPU), the re-score's result columns, changed (grade or action
                    differs from the position's previous record), created_at
    position_state  position_id, as_of, grade, action, updated_at: the latest record of each position, what
                    the next alert is de-duplicated against
    alert_outbox    seq (the polling cursor), alert_key (idempotency key), position_id, spu_id, trigger,
                    source_id (sweep_id or event_id), as_of, action, previous_action, reasons, observation,
                    created_at; delivery: attempts, next_attempt_at, claimed_by, claimed_until,
                    delivered_at, last_error
    write_gate      one row per gate: a transaction that writes alerts updates it first, so such
                    transactions run one at a time (SQLite and PostgreSQL alike) and outbox sequence numbers
                    become visible in order: a poller that reads up to seq n never skips a smaller one later;
                    its ``turns`` count the transactions through it
    market_turns    spu_id, turn: the gate turn that last changed the SPU's market, so that a market update
                    scored before it took the gate knows whether what it read is still current

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the event path asks for the newest market day on every update; without an index that is a full scan
    op.create_index("ix_market_date", "market", ["date"])
    op.create_table(
        "health_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, index=True),
        sa.Column("position_id", sa.String(64), nullable=False, index=True),
        sa.Column("spu_id", sa.String(64), nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("observation", sa.Text, nullable=False),
        sa.Column("unit_value", sa.Float),
        sa.Column("value_source", sa.String(16), nullable=False),
        sa.Column("value_low", sa.Float),
        sa.Column("value_high", sa.Float),
        sa.Column("collateral_value", sa.Float),
        sa.Column("ltv", sa.Float),
        sa.Column("price_change", sa.Float),
        sa.Column("velocity_trend", sa.Float),
        sa.Column("days_to_liquidate", sa.Float),
        sa.Column("health", sa.Float, nullable=False),
        sa.Column("grade", sa.String(1), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("previous_action", sa.String(16)),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("p_loss", sa.Float),
        sa.Column("changed", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "position_state",
        sa.Column("position_id", sa.String(64), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("grade", sa.String(1), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "alert_outbox",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_key", sa.String(160), nullable=False, unique=True),
        sa.Column("position_id", sa.String(64), nullable=False),
        sa.Column("spu_id", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),       # sweep | market
        sa.Column("source_id", sa.String(64), nullable=False),     # the sweep_id or the market event_id
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("previous_action", sa.String(16)),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("observation", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime, nullable=False),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("claimed_until", sa.DateTime),
        sa.Column("delivered_at", sa.DateTime),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_alert_outbox_due", "alert_outbox", ["delivered_at", "next_attempt_at"])
    op.create_index("ix_alert_outbox_position", "alert_outbox", ["position_id"])
    op.create_table(
        "write_gate",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("turns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "market_turns",
        sa.Column("spu_id", sa.String(64), primary_key=True),
        sa.Column("turn", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(sa.table("write_gate", sa.column("name", sa.String), sa.column("turns", sa.BigInteger)),
                   [{"name": "alerts", "turns": 0}])


def downgrade() -> None:
    for table in ("market_turns", "write_gate", "alert_outbox", "position_state", "health_events"):
        op.drop_table(table)
    op.drop_index("ix_market_date", table_name="market")
