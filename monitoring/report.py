"""The sweep report a desk reads: totals, grades, the worst positions and why, LTV spread, and the price
and sales trends of flagged SPUs. One self-contained HTML file (plots inlined as PNG)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import polars as pl

from data.files import write_atomic
from monitoring.reasons import reason_texts

WORST_SHOWN = 25
TRENDS_SHOWN = 6


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plots(results: pl.DataFrame, market: pl.DataFrame, flagged: list[str]) -> tuple[str, list[tuple[str, str]]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.hist(results["ltv"].drop_nulls().clip(0, 2).to_numpy(), bins=40, color="#4a78b5")
    ax.axvline(1.0, color="#b00", lw=1)
    ax.set_xlabel("LTV (loan / collateral value)")
    ax.set_ylabel("positions")
    ltv = _png(fig)
    trends = []
    for spu in flagged[:TRENDS_SHOWN]:
        series = market.filter(pl.col("spu_id") == spu).sort("date")
        if series.height < 2:
            continue
        fig, ax = plt.subplots(figsize=(4.2, 2.2))
        ax.plot(series["date"].to_list(), series["price"].to_numpy(), color="#333", lw=1)
        ax.set_ylabel("price")
        twin = ax.twinx()
        twin.bar(series["date"].to_list(), series["units_sold"].to_numpy(), color="#9bc", alpha=0.6)
        twin.set_ylabel("units")
        ax.set_title(spu, fontsize=9)
        fig.autofmt_xdate()
        trends.append((spu, _png(fig)))
    return ltv, trends


def at_risk(results: pl.DataFrame) -> pl.DataFrame:
    """Sweep results with loan_amount (LTV x collateral value) and amount_at_risk: the loan less what the
    stock fetches at the low end of its value interval (its market value where there is no interval),
    never below zero. Largest first; the weaker health first among equals."""
    low = (pl.when(pl.col("value_low").is_not_null() & (pl.col("unit_value") > 0))
           .then(pl.col("collateral_value") * pl.col("value_low") / pl.col("unit_value"))
           .otherwise(pl.col("collateral_value")))
    return (results.with_columns((pl.col("ltv") * pl.col("collateral_value")).alias("loan_amount"))
            .with_columns((pl.col("loan_amount") - low).clip(0, None).fill_null(0.0).alias("amount_at_risk"))
            .sort(["amount_at_risk", "health"], descending=[True, False]))


def money(amount: float | None, currency: str) -> str:
    return "-" if amount is None else f"{currency} {amount:,.2f}"


def render_report(sweep: dict, results: pl.DataFrame, market: pl.DataFrame, currency: str) -> str:
    summary = sweep["summary"]
    worst = at_risk(results).head(WORST_SHOWN)
    flagged = results.filter(pl.col("action") != "ok").sort("health")["spu_id"].unique(maintain_order=True).to_list()
    ltv_png, trends = _plots(results, market, flagged)
    e = html.escape

    def row(r: dict) -> str:
        return ("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (
            r["position_id"], r["spu_id"], money(r["loan_amount"], currency), money(r["amount_at_risk"], currency),
            f"{r['health']:.0f}", r["grade"], r["action"],
            "-" if r["ltv"] is None else f"{r['ltv']:.0%}",
            "-" if r["price_change"] is None else f"{r['price_change']:+.0%}",
            "-" if r["velocity_trend"] is None else f"{r['velocity_trend']:.2f}",
            r["value_source"], " ".join(reason_texts(r["reasons"])))) + "</tr>")

    counts = lambda d: " ".join(f"<span class=pill>{e(str(k))}: {v}</span>" for k, v in d.items())  # noqa: E731
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(sweep['sweep_id'])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}.pill{{background:#eef;border-radius:8px;
padding:2px 8px;margin-right:6px}}.trends img{{margin:4px}}</style></head><body>
<h1>Health sweep {e(str(sweep['as_of']))}</h1>
<p>{summary['positions']:,} positions; loans {money(summary['loan_amount'], currency)}; collateral value
{money(summary['collateral_value'], currency)}; alerts raised {summary['alerts']}; stale prices {summary['stale_prices']}.</p>
<p>Grades: {counts(summary['grades'])}</p><p>Actions: {counts(summary['actions'])}</p>
<h2>LTV across the book</h2><img alt="LTV histogram" src="{ltv_png}">
<h2>Worst positions (largest amount at risk first)</h2><table><tr><th>position</th><th>SPU</th><th>loan</th>
<th>at risk</th><th>health</th><th>grade</th><th>action</th>
<th>LTV</th><th>price since pledge</th><th>4w/12w sales</th><th>value from</th><th>reasons</th></tr>
{''.join(row(r) for r in worst.iter_rows(named=True))}</table>
<h2>Flagged SPUs: price (line) and units sold (bars)</h2><div class=trends>
{''.join(f'<img alt="{e(s)}" src="{src}">' for s, src in trends) or '<p>none</p>'}</div>
</body></html>"""


def write_report(folder: str | Path, sweep: dict, results: pl.DataFrame, market: pl.DataFrame, currency: str) -> Path:
    return write_atomic(Path(folder) / f"{sweep['sweep_id']}.html", render_report(sweep, results, market, currency))


def write_replay_plot(curve: pl.DataFrame, points: dict, path: str | Path) -> Path:
    """The learned warning's recall / false-alarm curve (``replay.warning_curve``) with the rules and other
    alerting schemes (``points``: name -> ReplayScore) as points, on the same positions, as a PNG."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no global backend switch

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(curve["false_alarm_rate"].to_numpy(), curve["flag_recall"].to_numpy(), marker=".", color="#1f5fa8",
            label="learned early warning, by threshold")
    for (name, score), color in zip(points.items(), ("#b33", "#777", "#1f5fa8", "#393")):
        ax.scatter([score.false_alarm_rate], [score.flag_recall], color=color, zorder=3, marker="s")
        ax.annotate(name, (score.false_alarm_rate, score.flag_recall), textcoords="offset points", xytext=(6, -4))
    ax.set_xlabel("false-alarm rate (quiet positions alerted)")
    ax.set_ylabel("loss events flagged >= 7 days ahead")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return write_atomic(path, buffer.getvalue())
