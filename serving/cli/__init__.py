"""The `pledgeval` command: what desks, cron jobs and our own checks run. Each module holds a few small
commands over the pipeline layer below (valuation.pipeline, monitoring.jobs); none holds business logic."""

from serving.cli import backtest_command, catalog_commands, model_commands, monitor_commands  # noqa: F401
from serving.cli._common import app


def main() -> None:  # pragma: no cover - console entry point
    app()


__all__ = ["app", "main"]
