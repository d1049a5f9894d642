"""The lending backtest on real order history."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from data import DataFileError
from serving.cli._common import app, console, fail, print_rows


@app.command("backtest")
def backtest_command(
    online_retail: Annotated[Path, typer.Option(help="Online Retail order lines (file or folder).")],
    start: Annotated[str, typer.Option("--from", help="ISO date: the first pledge date is the first day of a "
                                                      "month on or after it.")] = "2011-05-01",
    until: Annotated[str, typer.Option(help="ISO date: the last pledge date is on or before it.")] = "2011-07-01",
    horizon_days: Annotated[int, typer.Option(min=1, help="Days to sell the stock after a default.")] = 60,
    salvage: Annotated[float, typer.Option(help="Share of P that units unsold by then fetch.")] = 0.25,
    retrain: Annotated[str, typer.Option(help="'each': train before every pledge date on the lines before it; "
                                              "'once': train at the first date only.")] = "each",
    report: Annotated[Optional[Path], typer.Option(help="HTML report to write.")] = Path("var/reports/backtest.html"),
    out: Annotated[Optional[Path], typer.Option(help="Write every position (parquet).")] = None,
) -> None:
    """Walk-forward lending backtest: lend the pledge price, sell at the prices the market paid, count breaches."""
    from valuation import backtest

    try:
        first, last = date.fromisoformat(start), date.fromisoformat(until)
    except ValueError as exc:
        fail(f"--from/--until: not an ISO date ({exc})")
    try:
        summary, positions, seconds = backtest.run_online_retail(
            online_retail, first, last, horizon_days=horizon_days, salvage=salvage, retrain=retrain, log=console.print)
    except (DataFileError, backtest.BacktestError) as exc:
        fail(str(exc))
    print_rows(f"lending backtest: {summary['ours']['n']} positions, model retrained {retrain}, {seconds:.0f} s",
               backtest.TABLE_HEADER, backtest.table_rows(summary))
    console.print(f"decisions: {dict(positions['decision'].value_counts().iter_rows())}; haircut: "
                  f"{dict(positions['haircut_source'].value_counts().iter_rows())}")
    if out:
        positions.write_parquet(out)
    if report:
        from valuation.backtest_report import write_report

        console.print(f"report: {write_report(positions, summary, report, 'Lending backtest, Online Retail')}")
    print(backtest.key_values(summary))
