"""The backtest as one HTML page: the advance-vs-breach frontier of ours against flat advances, and per
pledge date the breach and advance rates. Plots use matplotlib's object API (no pyplot, no global backend)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure

from valuation.backtest import TABLE_HEADER, frontier, key_values, table_rows
from data.files import write_atomic


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _frontier_plot(positions: pl.DataFrame, summary: dict) -> str:
    ours, flat = frontier(positions)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    ax.plot([a for a, _ in flat], [b for _, b in flat], color="#777", label="flat advance of P")
    ax.plot([a for a, _ in ours], [b for _, b in ours], color="#1f5fa8", label="ours, every loan scaled")
    o = summary["ours"]
    ax.scatter([o["advance_rate"]], [o["breach_rate"]], color="#1f5fa8", zorder=3, label="ours as served")
    for name in ("flat30", "flat50", "flat65"):
        f = summary[name]
        ax.scatter([f["advance_rate"]], [f["breach_rate"]], color="#777", marker="s", zorder=3)
        ax.annotate(name, (f["advance_rate"], f["breach_rate"]), textcoords="offset points", xytext=(5, -10))
    ax.axhline(1 - summary["confidence"], color="#b33", linestyle=":", label="policy breach rate")
    ax.set_xlabel("advance rate (loan / market value)")
    ax.set_ylabel("breach rate (positions)")
    ax.set_ylim(0, max(0.3, o["breach_rate"] * 1.2))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _png(fig)


def _per_date_plot(summary: dict) -> str:
    dates = list(summary["by_date"])
    fig = Figure(figsize=(7, 3.6))
    left, right = fig.subplots(1, 2)
    x = range(len(dates))
    for ax, key, title in ((left, "breach_rate", "breach rate"), (right, "advance_rate", "advance rate")):
        ax.bar([i - 0.2 for i in x], [summary["by_date"][d]["ours"][key] for d in dates], 0.4, label="ours",
               color="#1f5fa8")
        ax.bar([i + 0.2 for i in x], [summary["by_date"][d]["flat50"][key] for d in dates], 0.4, label="flat 0.5",
               color="#999")
        ax.set_xticks(list(x), [str(d) for d in dates], rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    left.legend()
    return _png(fig)


def write_report(positions: pl.DataFrame, summary: dict, path: str | Path, title: str) -> Path:
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table_rows(summary))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}code{{font-size:.85em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Each position lends the service's pledge price; after a default at the pledge date the stock is sold at the
prices the market actually paid. A breach is a recovery below the loan.</p>
<img alt="advance rate against breach rate, ours and flat advances" src="data:image/png;base64,{_frontier_plot(positions, summary)}">
<img alt="breach and advance rate per pledge date" src="data:image/png;base64,{_per_date_plot(summary)}">
<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
<p><code>{html.escape(key_values(summary))}</code></p></body></html>"""
    return write_atomic(path, page.encode())
