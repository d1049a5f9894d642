"""Walk-forward lending backtest: lend the service's pledge price, then sell the stock at what the market paid.

For each pledge date t (the first day of each month in the window):
- the model is trained on order lines before t only, by the path ``pledgeval train`` takes
  (``retrain="each"``), or once at the first date and reused (``retrain="once"``);
- every SPU sold on >= 5 distinct days of the 90 before t is pledged: quantity Q = its units sold in the
  30 days before t, market price P = the median unit price of those 30 days (cancelled lines, and lines
  with a non-positive quantity or price, are left out);
- the loan per unit L is the pledge unit price ``PledgeModel.price`` answers for (SPU, Q), as for a desk;
- after a default at t the lender sells up to Q units in the order and at the unit prices the market
  actually paid in [t, t + H); units unsold then fetch salvage x P. Recovery per unit R; a **breach** is
  R < L.
Baselines on the same positions: flat advances of P (0.3, 0.5, 0.65) and the Basel-style 40% haircut (0.6).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
from scipy.stats import chi2

from valuation.recovery import eligible, liquidate, market_snapshot, sales_lines

BATCH = 500  # requests per PledgeModel.price call (it takes at most 1,000)
BASELINES = {"flat30": 0.30, "flat50": 0.50, "flat65": 0.65, "basel60": 0.60}  # advance as a share of P


class BacktestError(ValueError):
    """A backtest that cannot run as asked; ``field`` names the option or column at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def month_starts(start: date, until: date) -> list[date]:
    """The first day of each month from ``start`` (rounded up to a first) to ``until``, inclusive."""
    def next_month(day: date) -> date:
        return (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    first = start if start.day == 1 else next_month(start)
    dates = []
    while first <= until:
        dates.append(first)
        first = next_month(first)
    return dates


def run(tables_before: Callable[[datetime], dict[str, pl.DataFrame]], orders: pl.DataFrame,
        pledge_dates: list[date], *, horizon_days: int = 60, salvage: float = 0.25, retrain: str = "each",
        train: Callable | None = None, log=print) -> pl.DataFrame:
    """One row per (pledge date, SPU): quantity, price (P), value, loan_per_unit (L), decision,
    haircut_source, recovery (R), breach. ``tables_before(t)``: the catalogue tables as known before t
    (spus and orders; the model trains on them); ``orders``: every order line, for the outcomes."""
    if retrain not in ("each", "once"):
        raise BacktestError("--retrain", f"must be 'each' or 'once', got {retrain!r}")
    if not pledge_dates:
        raise BacktestError("--from/--until", "the window holds no first day of a month")
    if not 0 <= salvage < 1:
        raise BacktestError("--salvage", f"must be in [0, 1), got {salvage}")
    lines = sales_lines(orders)
    if lines.height == 0:
        raise BacktestError("orders", "no sale lines (all cancelled, or no positive quantity and price)")
    first, last = lines["ordered_at"].min(), lines["ordered_at"].max()
    if train is None:
        from valuation.model import PledgeModel
        train = PledgeModel.train
    frames, model = [], None
    for pledge in pledge_dates:
        t = datetime.combine(pledge, datetime.min.time())
        if t <= first:
            raise BacktestError("--from", f"pledge date {pledge} is not after the data's first sale {first.date()}")
        if t + timedelta(days=horizon_days) > last + timedelta(days=1):
            raise BacktestError("--horizon-days", f"pledge date {pledge} + {horizon_days} days runs past the "
                                f"data's last day {last.date()}: shorten the horizon or end the window earlier")
        book = eligible(market_snapshot(lines, t)).select("spu_id", pl.col("units_30").alias("quantity"), "price")
        if book.height == 0:
            log and log(f"{pledge}: no eligible positions")
            continue
        if model is None or retrain == "each":
            log and log(f"{pledge}: training on order lines before {pledge} ...")
            model = train(tables_before(t), log=None)
        requests = [{"spu_id": s, "quantity": int(q)} for s, q in book.select("spu_id", "quantity").iter_rows()]
        answers = pl.concat([model.price(requests[i:i + BATCH]) for i in range(0, len(requests), BATCH)],
                            how="diagonal_relaxed")
        if answers["error"].is_not_null().any():
            bad = answers.filter(pl.col("error").is_not_null())
            raise BacktestError("model", f"{bad.height} positions could not be priced, e.g. {bad['error'][0]}")
        sold = liquidate(lines, book, t, horizon_days, salvage)
        frames.append(sold.with_columns(
            pl.lit(pledge).alias("pledge_date"), answers["value"], answers["pledge_unit_price"].alias("loan_per_unit"),
            answers["decision"], answers["haircut_source"], answers["breach_probability"],
            answers.get_column("haircut_recovery", default=pl.lit(None, dtype=pl.Float64).alias("haircut_recovery")),
        ).with_columns((pl.col("recovery") < pl.col("loan_per_unit")).alias("breach")))
        log and log(f"{pledge}: {book.height} positions priced and liquidated")
    if not frames:
        raise BacktestError("--from/--until", "no SPU is eligible at any pledge date of the window (sold on >= 5 "
                            "days of the 90 before it)")
    return pl.concat(frames, how="diagonal_relaxed").select(
        "pledge_date", "spu_id", "quantity", "price", "value", "loan_per_unit", "decision", "haircut_source",
        "breach_probability", "haircut_recovery", "units_sold_back", "recovery", "recovery_ratio", "breach")


def run_online_retail(path, first: date, last: date, *, horizon_days: int = 60, salvage: float = 0.25,
                      retrain: str = "each", confidence: float | None = None, train: Callable | None = None,
                      log=print) -> tuple[dict, pl.DataFrame, float]:
    """The backtest on an Online Retail file: the model at each date trains on the file read up to that
    date (titles included). Returns the summary, the positions and the seconds it took."""
    from data import read_online_retail
    from valuation.policy import load_policy

    started = time.monotonic()
    retail = read_online_retail(path)

    def tables_before(t: datetime) -> dict[str, pl.DataFrame]:
        before = read_online_retail(path, until=t.date().isoformat())
        return {"spus": before.spus, "orders": before.orders}
    positions = run(tables_before, retail.orders, month_starts(first, last), horizon_days=horizon_days,
                    salvage=salvage, retrain=retrain, train=train, log=log)
    confidence = confidence if confidence is not None else load_policy()["recovery"]["confidence"]
    return summarize(positions, confidence), positions, time.monotonic() - started


def kupiec_pof(n: int, breaches: int, p: float) -> float:
    """p-value of Kupiec's proportion-of-failures test: are ``breaches`` in ``n`` consistent with rate p?"""
    if n == 0:
        return float("nan")
    x = breaches

    def loglik(rate: float) -> float:
        return (n - x) * (math.log1p(-rate) if rate < 1 else -math.inf if n > x else 0.0) + \
            (x * math.log(rate) if x else 0.0)
    stat = -2 * (loglik(p) - loglik(x / n))
    return float(chi2.sf(max(stat, 0.0), df=1))


def figures(frame: pl.DataFrame, loan: pl.Expr) -> dict:
    """Breach rate, loss rate and advance rate of lending ``loan`` per unit on these positions."""
    if frame.height == 0:
        return {"n": 0, "breaches": 0, "breach_rate": float("nan"), "loss_rate": float("nan"),
                "advance_rate": float("nan")}
    f = frame.select(
        pl.len().alias("n"), (pl.col("recovery") < loan).sum().alias("breaches"),
        ((loan - pl.col("recovery")).clip(0, None) * pl.col("quantity")).sum().alias("loss"),
        (loan * pl.col("quantity")).sum().alias("lent"), (pl.col("price") * pl.col("quantity")).sum().alias("worth"),
    ).row(0, named=True)
    return {"n": f["n"], "breaches": f["breaches"], "breach_rate": f["breaches"] / f["n"],
            "loss_rate": f["loss"] / f["lent"] if f["lent"] else 0.0, "advance_rate": f["lent"] / f["worth"]}


def summarize(positions: pl.DataFrame, confidence: float) -> dict:
    """Ours in total, among automatically accepted positions and per pledge date; the baselines."""
    ours = pl.col("loan_per_unit")
    out = {"ours": figures(positions, ours)}
    out["ours"]["kupiec_p"] = kupiec_pof(out["ours"]["n"], out["ours"]["breaches"], 1 - confidence)
    accepted = positions.filter(pl.col("decision") == "accept")
    out["auto"] = figures(accepted, ours)
    out["auto"]["share"] = accepted.height / positions.height if positions.height else float("nan")
    out["auto"]["kupiec_p"] = kupiec_pof(out["auto"]["n"], out["auto"]["breaches"], 1 - confidence)
    for name, advance in BASELINES.items():
        out[name] = figures(positions, pl.col("price") * advance)
    out["by_date"] = {d: {"ours": figures(part, ours), "flat50": figures(part, pl.col("price") * 0.5),
                          "auto_share": part.filter(pl.col("decision") == "accept").height / part.height}
                      for (d,), part in sorted(positions.partition_by("pledge_date", as_dict=True).items())}
    for part in out["by_date"].values():  # a bound that holds only pooled over the dates is not a bound
        part["ours"]["kupiec_p"] = kupiec_pof(part["ours"]["n"], part["ours"]["breaches"], 1 - confidence)
    out["confidence"] = confidence
    # the same lender judged at a flat lender's terms: every loan scaled by one factor until it matches
    out["ours_at_flat30_advance"] = _scaled_to(positions, "advance_rate", out["flat30"]["advance_rate"])
    out["ours_at_flat50_breach"] = _scaled_to(positions, "breach_rate", out["flat50"]["breach_rate"])
    return out


def _scaled_to(positions: pl.DataFrame, key: str, target: float) -> dict:
    """Ours with every loan scaled by the largest factor (bisection) whose ``key`` stays at most ``target``."""
    low, high = 0.0, 4.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if figures(positions, pl.col("loan_per_unit") * mid)[key] <= target else (low, mid)
    return {**figures(positions, pl.col("loan_per_unit") * low), "scale": low}


def frontier(positions: pl.DataFrame, scales=np.linspace(0.2, 2.0, 37), advances=np.linspace(0.05, 0.95, 37)):
    """(advance rate, breach rate) of ours with every loan scaled by s, and of flat advances a."""
    ours = [figures(positions, pl.col("loan_per_unit") * float(s)) for s in scales]
    flat = [figures(positions, pl.col("price") * float(a)) for a in advances]
    return ([(f["advance_rate"], f["breach_rate"]) for f in ours], [(f["advance_rate"], f["breach_rate"]) for f in flat])


def key_values(summary: dict) -> str:
    """The figures as one ``key=value`` line."""
    o, a, f = summary["ours"], summary["auto"], summary["flat50"]
    return (f"breach_rate={o['breach_rate']:.4f} loss_rate={o['loss_rate']:.4f} advance_rate={o['advance_rate']:.4f} "
            f"kupiec_p={o['kupiec_p']:.4f} auto_share={a['share']:.4f} auto_breach_rate={a['breach_rate']:.4f} "
            f"auto_advance_rate={a['advance_rate']:.4f} flat50_breach_rate={f['breach_rate']:.4f} "
            f"flat50_advance_rate={f['advance_rate']:.4f} flat50_loss_rate={f['loss_rate']:.4f} "
            f"flat30_breach_rate={summary['flat30']['breach_rate']:.4f} "
            f"breach_at_flat30_advance={summary['ours_at_flat30_advance']['breach_rate']:.4f} "
            f"advance_at_flat50_breach={summary['ours_at_flat50_breach']['advance_rate']:.4f} "
            f"worst_date_breach_rate={max(d['ours']['breach_rate'] for d in summary['by_date'].values()):.4f} "
            f"worst_date_kupiec_p={min(d['ours']['kupiec_p'] for d in summary['by_date'].values()):.4f} "
            f"confidence={summary['confidence']} "
            f"n_positions={o['n']}")


def table_rows(summary: dict) -> list[list[str]]:
    """Rows for a printed table: lender, positions, breaches, breach rate, loss rate, advance rate, and Kupiec's
    p-value against the policy's confidence where the row is ours as priced (blank elsewhere)."""
    def row(name, f):
        return [name, str(f["n"]), str(f["breaches"]), f"{f['breach_rate']:.4f}", f"{f['loss_rate']:.4f}",
                f"{f['advance_rate']:.4f}", f"{f['kupiec_p']:.4f}" if "kupiec_p" in f else ""]
    rows = [row("ours (pledge price)", summary["ours"]),
            row(f"ours, accepted automatically ({summary['auto']['share']:.1%})", summary["auto"])]
    rows += [row(f"{name} (advance {adv:.2f} of P)", summary[name]) for name, adv in BASELINES.items()]
    rows += [row(f"ours scaled x{summary[k]['scale']:.2f} to {what}", summary[k]) for k, what in
             (("ours_at_flat30_advance", "flat30's advance"), ("ours_at_flat50_breach", "flat50's breach rate"))]
    for d, part in summary["by_date"].items():
        rows.append(row(f"ours, pledged {d}", part["ours"]))
        rows.append(row(f"flat50, pledged {d}", part["flat50"]))
    return rows


TABLE_HEADER = ["lender", "positions", "breaches", "breach rate", "loss rate", "advance rate", "kupiec p"]
