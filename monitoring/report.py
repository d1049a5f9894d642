"""The sweep report a desk reads: totals, grades, the worst positions and why, LTV spread, and the price
and sales trends of the worst positions' products. One self-contained HTML file (plots inlined as PNG)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import polars as pl

from data.files import write_atomic
from monitoring.reasons import reason_texts

WORST_SHOWN = 25
def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plots(results: pl.DataFrame, market: pl.DataFrame, shown: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """The LTV histogram, and per shown (spu_id, title) its price (line) and units sold (bars) over time,
    labelled "title (spu_id)"."""
    # the object API: no pyplot state and no global backend switch inside a library function
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.6))
    ax = fig.subplots()
    ax.hist(results["ltv"].drop_nulls().clip(0, 2).to_numpy(), bins=40, color="#4a78b5")
    ax.axvline(1.0, color="#b00", lw=1)
    ax.set_xlabel("LTV (loan / collateral value)")
    ax.set_ylabel("positions")
    ltv = _png(fig)
    trends = []
    for spu, title in shown:
        series = market.filter(pl.col("spu_id") == spu).sort("date")
        if series.height < 2:
            continue
        fig = Figure(figsize=(4.4, 2.3))
        ax = fig.subplots()
        twin = ax.twinx()
        # bars dark enough to read on white (about 4.6:1), behind the price line
        twin.bar(series["date"].to_list(), series["units_sold"].to_numpy(), color="#5a7fb0", width=0.8)
        twin.set_ylabel("units sold")
        ax.plot(series["date"].to_list(), series["price"].to_numpy(), color="#222", lw=1.2)
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_ylabel("price")
        locator = AutoDateLocator(maxticks=5)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # short labels that do not collide
        label = f"{title} ({spu})" if title else spu
        ax.set_title(label, fontsize=9)
        trends.append((label, _png(fig)))
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
    titled = "title" in worst.columns
    shown = list(dict.fromkeys(zip(worst["spu_id"].to_list(),
                                   worst["title"].to_list() if titled else [None] * worst.height)))
    ltv_png, trends = _plots(results, market, shown)
    e = html.escape

    def row(r: dict) -> str:
        why = "".join(f"<li>{e(t)}</li>" for t in reason_texts(r["reasons"]))
        return ("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (
            r["position_id"], r.get("title") or r["spu_id"], money(r["loan_amount"], currency),
            money(r["amount_at_risk"], currency),
            f"{r['health']:.0f}", r["grade"], r["action"],
            "-" if r["ltv"] is None else f"{r['ltv']:.0%}",
            "-" if r["price_change"] is None else f"{r['price_change']:+.0%}",
            "-" if r["velocity_trend"] is None else f"{r['velocity_trend']:.2f}",
            r["value_source"])) + f"<td class=why><ul>{why}</ul></td></tr>")

    counts = lambda d: " ".join(f"<span class=pill>{e(str(k))}: {v}</span>" for k, v in d.items())  # noqa: E731
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(sweep['sweep_id'])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}.pill{{background:#eef;border-radius:8px;
padding:2px 8px;margin-right:6px}}.trends img{{margin:4px}}td.why{{min-width:300px;font-size:13px}}
td.why ul{{margin:0;padding-left:16px}}</style></head><body>
<h1>Health sweep {e(str(sweep['as_of']))}</h1>
<p>{summary['positions']:,} positions; loans {money(summary['loan_amount'], currency)}; collateral value
{money(summary['collateral_value'], currency)}; alerts raised {summary['alerts']}; stale prices {summary['stale_prices']}.</p>
<p>Grades: {counts(summary['grades'])}</p><p>Actions: {counts(summary['actions'])}</p>
<h2>LTV across the book</h2><img alt="LTV histogram" src="{ltv_png}">
<h2>Worst positions (largest amount at risk first)</h2><table><tr><th>position</th><th>product</th><th>loan</th>
<th>at risk</th><th>health</th><th>grade</th><th>action</th>
<th>LTV</th><th>price since pledge</th><th>4w/12w sales</th><th>value from</th><th>reasons</th></tr>
{''.join(row(r) for r in worst.iter_rows(named=True))}</table>
<h2>The worst positions' products: price (line) and units sold (bars)</h2><div class=trends>
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
