"""The lending backtest on real history (valuation/backtest.py): lend our pledge price, sell at the prices
the market actually paid, count breaches; flat advances on the same positions. Writes the HTML report.

    python bench/backtest.py --online-retail ../shared/data/online_retail --from 2011-05-01 --until 2011-07-01 \\
        --horizon-days 60 [--retrain each|once] [--report var/reports/backtest.html]
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, shared  # noqa: E402
from valuation import backtest  # noqa: E402
from valuation.backtest_report import write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--online-retail", type=Path, default=None)
    parser.add_argument("--from", dest="start", default="2011-05-01")
    parser.add_argument("--until", default="2011-07-01")
    parser.add_argument("--horizon-days", type=int, default=60)
    parser.add_argument("--salvage", type=float, default=0.25)
    parser.add_argument("--retrain", choices=("each", "once"), default="each")
    parser.add_argument("--report", type=Path, default=Path("var/reports/backtest.html"))
    parser.add_argument("--positions", type=Path, default=None, help="also write every position as parquet")
    args = parser.parse_args()
    summary, positions, seconds = backtest.run_online_retail(
        args.online_retail or shared("online_retail"), date.fromisoformat(args.start), date.fromisoformat(args.until),
        horizon_days=args.horizon_days, salvage=args.salvage, retrain=args.retrain)
    print_table(f"Lending backtest, Online Retail, pledge dates {args.start}..{args.until}, horizon "
                f"{args.horizon_days} days, salvage {args.salvage}, model retrained {args.retrain}; {seconds:.0f} s",
                backtest.TABLE_HEADER, backtest.table_rows(summary))
    print(f"report: {write_report(positions, summary, args.report, 'Lending backtest, Online Retail')}")
    if args.positions:
        args.positions.parent.mkdir(parents=True, exist_ok=True)
        positions.write_parquet(args.positions)
        print(f"positions: {args.positions}")
    print(backtest.key_values(summary) + f" seconds={seconds:.0f}")


if __name__ == "__main__":
    main()
