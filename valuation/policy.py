"""Haircut and admission: from a value with its interval to a pledge price and a decision, with reasons.

``HaircutPolicy`` and ``AdmissionPolicy`` take their parameters from ``policy.toml`` (or a dict) and add
columns, one row per priced SPU: ``columns`` takes a frame or a dict of numpy columns and answers numpy
columns; ``apply`` adds them to a frame. A desk's one-SPU request is the common case: numpy on one row
costs microseconds, where building polars columns costs tens of microseconds each.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl

DEFAULT_POLICY = Path(__file__).with_name("policy.toml")
HAIRCUT_PARTS = ("haircut_base", "haircut_market", "haircut_liquidity", "haircut_uncertainty")


def load_policy(path: str | Path | None = None) -> dict:
    with open(path or DEFAULT_POLICY, "rb") as handle:
        return tomllib.load(handle)


Columns = Mapping[str, "np.ndarray | pl.Series"]  # a DataFrame, or a dict of numpy columns (the request path)


def currency_of(policy: dict) -> str:
    """The ISO 4217 code of the catalogue's prices (``[catalogue] currency``); USD for a policy without it."""
    return policy.get("catalogue", {}).get("currency", "USD")


def _floats(frame: Columns, name: str) -> np.ndarray:
    """A column as float64 with NaN for null (unknown)."""
    column = frame[name]
    if isinstance(column, pl.Series):
        return column.cast(pl.Float64).to_numpy()
    return np.asarray(column, dtype=np.float64)


def _categories(frame: Columns) -> list[str | None]:
    # a catalogue without categories gives an all-null column (dtype Null): still a list of None
    column = frame["category"]
    return column.cast(pl.String).to_list() if isinstance(column, pl.Series) else list(column)


def _bools(frame: Columns, name: str) -> np.ndarray:
    column = frame[name]
    return (column.to_numpy() if isinstance(column, pl.Series) else np.asarray(column)).astype(bool)


def _height(frame: Columns) -> int:
    return frame.height if isinstance(frame, pl.DataFrame) else len(next(iter(frame.values())))


class HaircutPolicy:
    """Adds the haircut parts, the haircut, days_to_sell, the pledge unit price and haircut_at_cap.

    Needs columns: category, value, value_low, quantity, daily_volatility (null if unknown),
    units_per_day (null if unknown)."""

    def __init__(self, policy: dict | None = None):
        self.config = (policy or load_policy())["haircut"]

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` plus the new columns (it must not have them yet)."""
        return frame.hstack([pl.Series(k, v, nan_to_null=k == "days_to_sell") for k, v in self.columns(frame).items()])

    def columns(self, frame: Columns) -> dict[str, np.ndarray]:
        """The new columns, as numpy arrays (NaN: unknown)."""
        c = self.config
        base = np.array([c.get("base", {}).get(k, c["default_base"]) for k in _categories(frame)], dtype=np.float64)
        volatility = _floats(frame, "daily_volatility")
        market = c["var_z"] * np.where(np.isnan(volatility), c["default_daily_volatility"], volatility) \
            * c["horizon_days"] ** 0.5
        per_day = _floats(frame, "units_per_day")
        selling = per_day > 0  # False where unknown (NaN)
        with np.errstate(divide="ignore", invalid="ignore"):
            days_to_sell = np.where(selling, _floats(frame, "quantity") / per_day, np.nan)
        liquidity = np.where(selling, np.minimum(np.maximum(days_to_sell - c["free_sell_days"], 0) / 30
                                                 * c["liquidity_per_30_days"], c["liquidity_cap"]),
                             c["unknown_liquidity"])
        value = _floats(frame, "value")
        uncertainty = c["uncertainty_weight"] * np.clip(1 - _floats(frame, "value_low") / value, 0, 1)
        haircut = np.clip(base + market + liquidity + uncertainty, c["floor"], c["cap"])
        return {"haircut_base": base, "haircut_market": market, "haircut_liquidity": liquidity,
                "haircut_uncertainty": uncertainty, "days_to_sell": days_to_sell, "haircut": haircut,
                "pledge_unit_price": value * (1 - haircut), "haircut_at_cap": haircut >= c["cap"]}


# What each admission reason means, as the desk page, the reports and the API's ``reason_text`` say it.
REASON_TEXT = {
    "category_not_financeable": "The desk does not lend against this category.",
    "illiquid": "Selling the pledged quantity would take longer than the policy allows.",
    "haircut_at_cap": "The haircut hit its cap: the value cannot be relied on.",
    "novel": "A new product that matches no known SPU, and its value is uncertain.",
    "slow_to_sell": "Selling the pledged quantity would take months.",
    "volatile": "Its price moves more from day to day than the policy accepts.",
    "negative_reviews": "Its reviews are mostly negative.",
    "no_history": "It has no sales or price history yet.",
    "wide_interval": "The value's 90% interval is wide.",
    "breach_risk": "The chance that a forced sale fetches less than the loan is above the policy's limit.",
}


def reason_texts(codes: list[str]) -> list[str]:
    """The sentences of admission reason codes (an unknown code is shown as itself)."""
    return [REASON_TEXT.get(code, code) for code in codes]


class AdmissionPolicy:
    """accept / review / reject with machine-readable reasons (a list of codes per row).

    reject: category_not_financeable, illiquid, haircut_at_cap; review: novel (no same-SPU match and a
    wide interval), slow_to_sell, volatile, negative_reviews, no_history, wide_interval; where the haircut
    was learned (``haircut_source``), review only on breach_risk (breach probability above the policy's).
    Needs the haircut columns plus value_high, negativity and matched."""

    REJECT = ("category_not_financeable", "illiquid", "haircut_at_cap")

    def __init__(self, policy: dict | None = None):
        policy = policy or load_policy()
        self.config = policy["admission"]
        # a learned haircut answers with its breach probability; above this the request goes to review
        self.max_breach_probability = 1.0 - policy.get("recovery", {}).get("confidence", 0.0)

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` plus reasons and decision (it must not have them yet)."""
        out = self.columns(frame)
        return frame.hstack([pl.Series("reasons", out["reasons"], dtype=pl.List(pl.String)),
                             pl.Series("decision", out["decision"], dtype=pl.String)])

    def columns(self, frame: Columns) -> dict[str, list]:
        """reasons (a list of codes per row) and decision."""
        c = self.config
        with np.errstate(invalid="ignore"):
            width = (_floats(frame, "value_high") - _floats(frame, "value_low")) / _floats(frame, "value")
        wide = width > c["max_relative_width"]  # False where the width is unknown (NaN) ...
        days_to_sell = _floats(frame, "days_to_sell")
        volatility, per_day = _floats(frame, "daily_volatility"), _floats(frame, "units_per_day")
        checks = {
            "category_not_financeable": np.array([k in c["not_financeable"] for k in _categories(frame)], dtype=bool),
            "illiquid": days_to_sell > c["max_days_to_sell"],
            "haircut_at_cap": _bools(frame, "haircut_at_cap") & bool(c["reject_at_haircut_cap"]),
            "novel": ~_bools(frame, "matched") & wide,
            "slow_to_sell": (days_to_sell > c["review_days_to_sell"]) & (days_to_sell <= c["max_days_to_sell"]),
            "volatile": volatility > c["max_daily_volatility"],
            "negative_reviews": _floats(frame, "negativity") > c["max_negativity"],
            "no_history": np.isnan(volatility) & np.isnan(per_day),
            "wide_interval": wide | np.isnan(width),  # ... but an unknown width is never taken as narrow
        }
        # Where the haircut was learned from recoveries, the risks the review checks look for (slow sales,
        # volatility, a wide interval, ...) are priced in: the decision rests on the breach probability.
        learned = np.array([s == "learned" for s in frame["haircut_source"]], dtype=bool) \
            if "haircut_source" in (frame.columns if isinstance(frame, pl.DataFrame) else frame) \
            else np.zeros(_height(frame), dtype=bool)
        for name in checks:
            if name not in self.REJECT:
                checks[name] = checks[name] & ~learned
        if learned.any():
            checks["breach_risk"] = learned & (_floats(frame, "breach_probability") > self.max_breach_probability + 1e-9)
        names, masks = list(checks), np.column_stack(list(checks.values()))
        reasons = [[names[k] for k in np.flatnonzero(row)] for row in masks]
        rejected = masks[:, [names.index(r) for r in self.REJECT]].any(axis=1)
        decision = np.where(rejected, "reject", np.where(masks.any(axis=1), "review", "accept"))
        return {"reasons": reasons, "reason_text": [reason_texts(r) for r in reasons], "decision": decision.tolist()}
