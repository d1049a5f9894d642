"""Re-scores the pledged book as prices and sales move: sweeps, health, alerts, reports, replay."""

from monitoring.health import ACTIONS, load_config, score_book
from monitoring.sweep import Monitor, SweepLocked, SweepOutcome, sweep_id_for

__all__ = ["ACTIONS", "Monitor", "SweepLocked", "SweepOutcome", "load_config", "score_book", "sweep_id_for"]
