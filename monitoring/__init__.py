"""Re-scores the pledged book as prices and sales move: sweeps, market updates between them, health, alerts
(polled and delivered), reports, replay."""

from monitoring.health import ACTIONS, load_config, score_book
from monitoring.market_updates import apply_market_updates
from monitoring.sweep import Monitor, SweepLocked, SweepOutcome, sweep_id_for

__all__ = ["ACTIONS", "Monitor", "SweepLocked", "SweepOutcome", "apply_market_updates", "load_config", "score_book",
           "sweep_id_for"]
