"""The health monitor: a sweep of the book, and the replay of the monitor on real history."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from data import DataFileError, read_online_retail
from serving.cli._common import DbOption, app, console, fail, open_store, print_rows


@app.command("sweep")
def sweep(
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="ISO date (default: the latest market date).")] = None,
    db: DbOption = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model for stale prices and the early warning "
                                                                 "(default: pledgeval:latest if present).")] = None,
    reports: Annotated[Path, typer.Option(help="Folder for the HTML report.")] = Path("var/reports"),
    config: Annotated[Optional[Path], typer.Option(help="Monitor thresholds (default monitoring/monitor.toml).")]
    = None,
    parts: Annotated[Optional[int], typer.Option(min=1, help="Score the book this many SPU ranges at a time, for "
                                                             "a book bigger than memory (still all or nothing).")]
    = None,
) -> None:
    """Re-score every open position as of a date, store results and alerts, write the HTML report.
    Safe for cron/Airflow: the same as-of twice changes nothing; a lock keeps two runs apart."""
    from monitoring import SweepLocked
    from monitoring.jobs import monitor_for, sweep_with_report

    try:
        when = date.fromisoformat(as_of) if as_of else None
    except ValueError:
        fail(f"--as-of: not an ISO date: {as_of!r}")
    if config is not None and not config.is_file():
        fail(f"--config: no file {config}")
    store = open_store(db)
    try:
        outcome, path = sweep_with_report(monitor_for(store, model, config), when, reports, parts=parts)
    except (SweepLocked, ValueError, LookupError) as exc:
        fail(str(exc))
    except OSError as exc:  # the report's folder: the sweep itself is stored by then
        fail(f"--reports: cannot write the report: {exc} (the sweep is stored; `pledgeval sweep` again with "
             f"another --reports writes it)")
    verb = "swept" if outcome.created else "already swept (nothing changed)"
    console.print(f"{outcome.sweep_id}: {verb}; {outcome.n_positions} positions, {outcome.n_alerts} alerts; "
                  f"actions {outcome.summary['actions']}; report {path}")


@app.command("replay")
def replay_command(
    online_retail: Annotated[Path, typer.Option(help="Online Retail order lines.")],
    pledge_date: Annotated[str, typer.Option(help="ISO date the book is pledged.")] = "2011-05-01",
    until: Annotated[str, typer.Option(help="ISO date the replay ends.")] = "2011-08-31",
    tune_pledge_date: Annotated[Optional[str], typer.Option(help="Choose the rules' watch thresholds on an "
                                                                 "earlier window starting here ...")] = "2011-01-01",
    tune_until: Annotated[Optional[str], typer.Option(help="... and ending here (must end before --pledge-date)."
                                                      )] = "2011-04-30",
    reports: Annotated[Path, typer.Option(help="Folder for the recall / false-alarm plot.")] = Path("var/reports"),
) -> None:
    """Replay real history day by day through the monitor and score its early warnings: the rules, and the
    learned early warning trained on the history before the pledge date."""
    from monitoring.jobs import replay_job

    try:
        pledge, end = date.fromisoformat(pledge_date), date.fromisoformat(until)
        tune = (date.fromisoformat(tune_pledge_date), date.fromisoformat(tune_until)) if tune_pledge_date else None
    except ValueError as exc:
        fail(f"--pledge-date/--until/--tune-*: not an ISO date ({exc})")
    try:
        retail = read_online_retail(online_retail)
        report = replay_job(retail.orders, retail.spus, pledge, end, tune, reports, log=console.print)
    except (DataFileError, ValueError) as exc:
        fail(str(exc))
    if report.tuned:
        console.print(f"rules' thresholds chosen on {tune[0]}..{tune[1]}: "
                      + ", ".join(f"{k}={v}" for k, v in report.tuned.items())
                      + f" (there: flag_recall {report.tuned_score.flag_recall:.3f}, false_alarm_rate "
                        f"{report.tuned_score.false_alarm_rate:.3f})")
    rules = report.rules
    runs = [("rules", rules.score), ("naive baseline: 14-day units < half the pre-pledge rate", rules.naive)]
    if report.learned is not None:
        runs.insert(0, (f"learned early warning (threshold {report.warning.threshold_:.3f})", report.learned.score))
    for name, result in runs:
        print_rows(f"replay, {name}: {result.n_positions} positions pledged {pledge}, swept daily to {end}",
                   ["", "alert >= 7 days before", "alert later", "no alert", "total"],
                   [["loss event", str(result.caught), str(result.late), str(result.missed), str(result.n_events)],
                    ["no event", str(result.false_alarms), "-", str(result.quiet_ok),
                     str(result.false_alarms + result.quiet_ok)]])
    if report.learned is None:
        fail(f"too few loss events before {pledge} to learn an early warning; the rules' figures are above")
    print_rows("learned early warning at other thresholds (same positions and sweeps)", report.curve.columns,
               [[f"{v:.3f}" for v in row] for row in report.curve.iter_rows()])
    console.print(f"plot: {report.plot}")
    score, warning = report.learned.score, report.warning
    print(f"flag_recall={score.flag_recall:.4f} false_alarm_rate={score.false_alarm_rate:.4f} "
          f"median_lead_days={score.median_lead_days:.1f} threshold={warning.threshold_:.4f} "
          f"training_false_alarm_rate={warning.training_false_alarm_rate_:.4f} "
          f"rules_flag_recall={rules.score.flag_recall:.4f} rules_false_alarm_rate={rules.score.false_alarm_rate:.4f} "
          f"rules_median_lead_days={rules.score.median_lead_days:.1f} naive_flag_recall={rules.naive.flag_recall:.4f} "
          f"naive_false_alarm_rate={rules.naive.false_alarm_rate:.4f} n_events={score.n_events} "
          f"n_positions={score.n_positions}")
