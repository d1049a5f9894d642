"""One table of what every reason code means, for the desk page, the sweep report and the API.

Admission codes come from valuation.policy; the health codes are the monitor's penalties
(monitoring.health) and the early warning's, ``early_warning:<feature>`` naming what moved p_loss most.
"""

from __future__ import annotations

from valuation.policy import REASON_TEXT as ADMISSION_TEXT

HEALTH_TEXT = {
    "ltv_high": "The loan is high against what the stock is worth now.",
    "price_drop": "Its price has fallen since the pledge.",
    "sales_slowing": "Its sales have slowed against their pace before the pledge.",
    "slow_liquidation": "Selling the pledged stock would take long at today's sales pace.",
    "volatile": "Its price swings widely.",
    "stale_price": "No recent sale: its price is out of date.",
    "early_warning": "The early warning expects sales or price to fall within weeks.",
}
FEATURE_TEXT = {  # early_warning:<feature>: what moved the warning most
    "sales_1w_vs_pledge": "last week's sales against the pledge-time pace",
    "sales_2w_vs_pledge": "the last two weeks' sales against the pledge-time pace",
    "sales_4w_vs_pledge": "the last four weeks' sales against the pledge-time pace",
    "sales_4w_vs_12w": "the last four weeks' sales against the last twelve",
    "active_share_4w": "how few days had sales in the last four weeks",
    "days_since_last_sale": "the days since the last sale",
    "days_since_pledge": "the time since the pledge",
    "age_days": "how new the product is",
    "price_vs_pledge": "the price against the pledge-time price",
    "price_4w_vs_pledge": "the last four weeks' price against the pledge-time price",
    "price_4w_vs_12w": "the last four weeks' price against the last twelve",
    "volatility": "price volatility",
    "ltv": "the loan-to-value",
    "days_of_cover": "the days of sales the pledged stock covers",
    "pledge_top_day_share": "how much of its pre-pledge sales came on one day",
    "pledge_active_share": "how few days had sales before the pledge",
    "comparables_sales_4w_vs_12w": "similar products' slowing sales",
    "comparables_price_4w_vs_12w": "similar products' falling prices",
    "comparables_active_share_4w": "how few days similar products sold on",
}
REASON_TEXT = {**ADMISSION_TEXT, **HEALTH_TEXT}


def reason_text(code: str) -> str:
    """The sentence for one reason code; an unknown code is shown as itself, never dropped."""
    if code.startswith("early_warning:"):
        feature = code.split(":", 1)[1]
        return f"Early warning driven by {FEATURE_TEXT.get(feature, feature.replace('_', ' '))}."
    return REASON_TEXT.get(code, code)


def reason_texts(codes) -> list[str]:
    return [reason_text(c) for c in codes or []]
