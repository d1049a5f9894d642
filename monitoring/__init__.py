"""Re-scores the pledged book as prices and sales move: sweeps, health, alerts."""
