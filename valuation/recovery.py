"""What a lender recovers when it sells pledged stock after a default, and the haircut learned from it.

A pledge at time t of Q units of an SPU whose market price is P (median unit price of its sales in the 30
days before t): if the borrower defaults at t, the lender sells up to Q units in the order and at the unit
prices the market actually paid over the next H days; units still unsold then fetch ``salvage x P`` (a
jobber's price). R is the recovery per unit and R / P the **recovery ratio**.

``RecoveryModel`` learns the lower quantile of R / P at the policy's confidence (quantile gradient boosting)
from past **pseudo-pledges**: every week whose horizon closed before the training data ends, each SPU on
sale then pledged at 0.5, 1 and 2 times its last 30 days of sales. The latest weeks conformalise it
(one-sided conformalised quantile regression, required to hold on each of those weeks): their residuals
shift the quantile so that the bound holds with the asked confidence, and give the breach probability at
any offered price.
Only outcomes a lender could have seen by the end of the training data are used.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from datetime import datetime, timedelta

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingRegressor

from embeddings.features import order_features
from valuation.explain import every_probe, probe, reference_quantiles, top_effects
from valuation.policy import HAIRCUT_PARTS

PRICE_WINDOW_DAYS = 30   # P and Q: the 30 days before the pledge
HISTORY_DAYS = 90        # eligibility and sales-rate features: the 90 days before the pledge
AGE_CAP_DAYS = 60        # SPUs older than this count as established
MIN_ACTIVE_DAYS = 5      # an SPU is lendable on history only if it sold on at least this many days of 90
MARKET_FEATURES = ("log_price", "units_per_day_30", "units_per_day_90", "velocity_trend", "active_share_90",
                   "days_since_last_sale", "age_days", "volatility", "price_trend", "price_dispersion",
                   "unit_price_ratio_30", "unit_price_ratio_90", "low_price_ratio_90", "top_line_share_30", "lines_30",
                   "active_share_30", "units_per_day_7", "lines_90", "customers_30", "customers_90",
                   "top_customer_share_90", "repeat_customer_share_90")
HISTORY_FEATURES = ("own_recovery", "own_recovery_n", "comp_recovery", "comp_recovery_n")
# The value model's interval width is not a feature: it is fitted on all history up to the end of training,
# so for a past pseudo-pledge it knows what happened after that pledge (goods that kept selling get narrow
# intervals). That leak made the model trust itself too much: with it, the 2011-05-01 backtest date breached
# on 3.0% of positions at the 99% bound; without it, 1.9%.
FEATURES = (*MARKET_FEATURES, "days_of_cover", *HISTORY_FEATURES)
COVER = FEATURES.index("days_of_cover")  # the one feature of a known SPU that depends on the request
SMALL_CALL_ROWS = 2_048  # up to this many rows, the quantile model's per-call overhead outweighs threads
EXPLAINED_CACHE = 20_000  # (SPU, days-of-cover interval) answers kept; about 1 KB each
# what an answer carries about the learned haircut (null where the rule haircut applied)
LEARNED_COLUMNS = ("haircut_source", "haircut_recovery", "haircut_value_gap", "market_price", "breach_probability",
                   "haircut_drivers")
DRIVER_TYPE = pl.List(pl.Struct({"feature": pl.String, "value": pl.Float64, "effect": pl.Float64}))


def sales_lines(orders: pl.DataFrame) -> pl.DataFrame:
    """Lines the market actually paid: not cancelled, positive quantity and finite positive price."""
    if "customer_id" not in orders.columns:
        orders = orders.with_columns(pl.lit(None, dtype=pl.String).alias("customer_id"))
    return (orders.lazy().filter(~pl.col("cancelled").fill_null(False) & (pl.col("quantity") > 0)
                                 & (pl.col("unit_price") > 0) & pl.col("unit_price").is_finite())
            .select("order_id", "spu_id", "quantity", "unit_price", "ordered_at", "customer_id").collect())


def market_snapshot(lines: pl.DataFrame, at: datetime) -> pl.DataFrame:
    """Per SPU sold before ``at``, what a lender knows at ``at``: the price P, the units of the last 30 days
    (the pledged quantity of a backtest), active days and the market features of the recovery model."""
    seen = lines.lazy().filter(pl.col("ordered_at") < at)
    days_ago = (pl.lit(at) - pl.col("ordered_at")).dt.total_seconds() / 86400.0
    recent, last30 = days_ago < HISTORY_DAYS, days_ago < PRICE_WINDOW_DAYS
    state = (seen.group_by("spu_id").agg(
        pl.col("ordered_at").min().alias("first_sale"), pl.col("ordered_at").max().alias("last_sale"),
        pl.col("unit_price").filter(last30).median().alias("price"),
        pl.col("unit_price").filter(recent).median().alias("price_90"),
        pl.col("quantity").filter(last30).sum().alias("units_30"),
        pl.col("quantity").filter(recent).sum().alias("units_90"),
        pl.col("ordered_at").filter(recent).dt.date().n_unique().alias("active_days_90"),
        pl.col("unit_price").filter(last30).log().std().alias("price_dispersion"),
        # what a unit fetched on average (big orders buy at lower tiers) against P, the median of lines
        ((pl.col("unit_price") * pl.col("quantity")).filter(last30).sum()).alias("_revenue_30"),
        ((pl.col("unit_price") * pl.col("quantity")).filter(recent).sum()).alias("_revenue_90"),
        pl.col("unit_price").filter(recent).quantile(0.1).alias("_low_price_90"),
        pl.col("quantity").filter(last30).max().alias("_top_line_30"),
        pl.col("quantity").filter(last30).len().alias("lines_30"),
        pl.col("quantity").filter(recent).len().alias("lines_90"),
        (pl.col("ordered_at").filter(last30).dt.date().n_unique() / PRICE_WINDOW_DAYS).alias("active_share_30"),
        (pl.col("quantity").filter(days_ago < 7).sum() / 7).alias("units_per_day_7"),
    ).collect())
    buyers = _buyers(seen.filter(days_ago < HISTORY_DAYS), at).collect()
    # volatility is the catalogue's own definition (weekly medians), over the same 90 days
    volatility = order_features(lines.with_columns(pl.lit(False).alias("cancelled")),
                                as_of=at - timedelta(microseconds=1), window_days=HISTORY_DAYS)
    return (state.join(volatility.select("spu_id", "volatility"), on="spu_id", how="left", maintain_order="left")
            .join(buyers, on="spu_id", how="left", maintain_order="left")
            .with_columns(
                pl.col("price").log().alias("log_price"),
                (pl.col("units_30") / PRICE_WINDOW_DAYS).alias("units_per_day_30"),
                (pl.col("units_90") / HISTORY_DAYS).alias("units_per_day_90"),
                ((pl.col("units_30") / PRICE_WINDOW_DAYS) / (pl.col("units_90") / HISTORY_DAYS)).alias("velocity_trend"),
                (pl.col("active_days_90") / HISTORY_DAYS).alias("active_share_90"),
                ((pl.lit(at) - pl.col("last_sale")).dt.total_seconds() / 86400.0).alias("days_since_last_sale"),
                # capped: the data's first day censors every older SPU's age, so past the cap only
                # "not new" is known, the same in a short training history as in a long one
                ((pl.lit(at) - pl.col("first_sale")).dt.total_seconds() / 86400.0).clip(None, AGE_CAP_DAYS)
                .alias("age_days"),
                (pl.col("price") / pl.col("price_90")).log().alias("price_trend"),
                (pl.col("_revenue_30") / pl.col("units_30") / pl.col("price")).alias("unit_price_ratio_30"),
                (pl.col("_revenue_90") / pl.col("units_90") / pl.col("price")).alias("unit_price_ratio_90"),
                (pl.col("_low_price_90") / pl.col("price")).alias("low_price_ratio_90"),
                (pl.col("_top_line_30") / pl.col("units_30")).alias("top_line_share_30"))
            .drop("_revenue_30", "_revenue_90", "_low_price_90", "_top_line_30")
            .sort("spu_id"))


def _buyers(recent: pl.LazyFrame, at: datetime) -> pl.LazyFrame:
    """Who bought each SPU in the 90 days before ``at``, counting only lines with a known buyer: distinct
    buyers over 30 and 90 days, the biggest buyer's share of units, and the share of buyers who came back
    on another day. Goods many buyers reorder keep selling after a default; one buyer's stock may not.
    All null where no line names its buyer (guest orders, or a catalogue without buyers)."""
    known = recent.filter(pl.col("customer_id").is_not_null())
    per_buyer = (known.group_by("spu_id", "customer_id").agg(
        pl.col("quantity").sum().alias("_units"), pl.col("ordered_at").dt.date().n_unique().alias("_days"),
        (pl.col("ordered_at").max() >= at - timedelta(days=PRICE_WINDOW_DAYS)).alias("_last_30")))
    return per_buyer.group_by("spu_id").agg(
        pl.col("_last_30").sum().cast(pl.Float64).alias("customers_30"),
        pl.len().cast(pl.Float64).alias("customers_90"),
        (pl.col("_units").max() / pl.col("_units").sum()).alias("top_customer_share_90"),
        (pl.col("_days") > 1).mean().alias("repeat_customer_share_90"))


def eligible(snapshot: pl.DataFrame, min_active_days: int = MIN_ACTIVE_DAYS) -> pl.DataFrame:
    """SPUs a lender can value from their own sales: sold on >= ``min_active_days`` of the last 90 and
    in the last 30 days (so P and Q exist)."""
    return snapshot.filter((pl.col("active_days_90") >= min_active_days) & (pl.col("units_30") > 0)
                           & pl.col("price").is_not_null())


def liquidate(lines: pl.DataFrame, positions: pl.DataFrame, start: datetime, horizon_days: int,
              salvage: float) -> pl.DataFrame:
    """Sell each position after a default at ``start``. ``positions``: spu_id, quantity, price (P), one
    row per position (several per SPU allowed). Adds units_sold_back, recovery (per unit) and recovery_ratio
    (recovery / P). Sales are taken in time order from [start, start + horizon_days)."""
    keyed = positions.with_row_index("_position")
    window = lines.lazy().filter((pl.col("ordered_at") >= start)
                                 & (pl.col("ordered_at") < start + timedelta(days=horizon_days)))
    sold = (keyed.lazy().select("_position", "spu_id", pl.col("quantity").alias("_q"))
            .join(window, on="spu_id", how="inner")
            .sort("_position", "ordered_at", "order_id")
            .with_columns(pl.col("quantity").cum_sum().over("_position").alias("_through"))
            # units this line takes: what is still unsold before it, at most the line's quantity
            .with_columns((pl.col("_q") - pl.col("_through") + pl.col("quantity")).clip(0, None)
                          .clip(None, pl.col("quantity")).alias("_take"))
            .group_by("_position").agg(pl.col("_take").sum().alias("units_sold_back"),
                                       (pl.col("_take") * pl.col("unit_price")).sum().alias("_proceeds"))
            .collect())
    out = (keyed.join(sold, on="_position", how="left", maintain_order="left")
           .with_columns(pl.col("units_sold_back").fill_null(0), pl.col("_proceeds").fill_null(0.0))
           .with_columns(((pl.col("_proceeds") + (pl.col("quantity") - pl.col("units_sold_back"))
                           * salvage * pl.col("price")) / pl.col("quantity")).alias("recovery"))
           .with_columns((pl.col("recovery") / pl.col("price")).alias("recovery_ratio")))
    return out.drop("_position", "_proceeds")


def pseudo_pledge_dates(first: datetime, until: datetime, horizon_days: int, every_days: int,
                        warmup_days: int = PRICE_WINDOW_DAYS) -> list[datetime]:
    """Pledge dates every ``every_days`` whose horizon closed by ``until``, oldest first."""
    dates, at = [], until - timedelta(days=horizon_days)
    while at >= first + timedelta(days=warmup_days):
        dates.append(at)
        at -= timedelta(days=every_days)
    return dates[::-1]


def pseudo_pledges(lines: pl.DataFrame, until: datetime, *, horizon_days: int, salvage: float, every_days: int = 7,
                   multiples: tuple[float, ...] = (0.5, 1.0, 2.0), min_active_days: int = MIN_ACTIVE_DAYS) -> pl.DataFrame:
    """Past pledges whose outcome was known by ``until``: one row per (date, SPU, quantity multiple) with
    the market features at that date and the realised recovery ratio. Only lines before ``until`` are read."""
    lines = lines.filter(pl.col("ordered_at") < until)
    if lines.height == 0:
        return pl.DataFrame()
    frames = []
    for at in pseudo_pledge_dates(lines["ordered_at"].min(), until, horizon_days, every_days):
        snap = eligible(market_snapshot(lines, at), min_active_days)
        if snap.height == 0:
            continue
        book = pl.concat([snap.with_columns((pl.col("units_30") * m).round().clip(1, None).cast(pl.Int64)
                                            .alias("quantity"), pl.lit(m).alias("multiple")) for m in multiples])
        frames.append(liquidate(lines, book, at, horizon_days, salvage).with_columns(pl.lit(at).alias("pledged_at")))
    return pl.concat(frames) if frames else pl.DataFrame()


def with_history(examples: pl.DataFrame, neighbours: pl.DataFrame, horizon_days: int) -> pl.DataFrame:
    """Adds own_recovery(_n) and comp_recovery(_n): the mean recovery ratio (at 1x quantity) of the SPU's
    own and its comparables' pseudo-pledges whose horizon had closed by each example's date.
    ``neighbours``: spu_id, neighbour (an SPU is never its own neighbour)."""
    closed = (examples.filter(pl.col("multiple") == 1.0)
              .select("spu_id", (pl.col("pledged_at") + timedelta(days=horizon_days)).alias("closed_at"),
                      "recovery_ratio")
              .sort("spu_id", "closed_at")
              .with_columns(pl.col("recovery_ratio").cum_sum().over("spu_id").alias("_sum"),
                            pl.int_range(1, pl.len() + 1).over("spu_id").alias("_n"))
              .select("spu_id", "closed_at", "_sum", "_n").sort("closed_at"))
    keyed = examples.with_row_index("_example")

    def seen_by(frame: pl.DataFrame, key: str) -> pl.DataFrame:
        # the last cumulative row of `key`'s history closed at or before the example's pledge date
        return frame.sort("pledged_at").join_asof(closed.rename({"spu_id": key}), left_on="pledged_at",
                                                  right_on="closed_at", by=key, strategy="backward",
                                                  check_sortedness=False)  # both sorted by date above

    own = seen_by(keyed.select("_example", "spu_id", "pledged_at"), "spu_id").select(
        "_example", (pl.col("_sum") / pl.col("_n")).alias("own_recovery"), pl.col("_n").fill_null(0).alias("own_recovery_n"))
    pairs = keyed.select("_example", "spu_id", "pledged_at").join(neighbours, on="spu_id", how="inner")
    comp = (seen_by(pairs, "neighbour").group_by("_example")
            .agg((pl.col("_sum").sum() / pl.col("_n").sum()).alias("comp_recovery"),
                 pl.col("_n").sum().fill_null(0).alias("comp_recovery_n")))
    return (keyed.join(own, on="_example", how="left").join(comp, on="_example", how="left")
            .with_columns(pl.col("own_recovery_n").fill_null(0), pl.col("comp_recovery_n").fill_null(0))
            .sort("_example").drop("_example"))


def history_now(examples: pl.DataFrame, neighbours: pl.DataFrame, spu_ids: list[str]) -> pl.DataFrame:
    """The same history features for pricing after the training data: every closed pseudo-pledge counts."""
    closed = (examples.filter(pl.col("multiple") == 1.0).group_by("spu_id")
              .agg(pl.col("recovery_ratio").sum().alias("_sum"), pl.len().alias("_n")))
    base = pl.DataFrame({"spu_id": spu_ids}, schema={"spu_id": pl.String})
    own = base.join(closed, on="spu_id", how="left", maintain_order="left").select(
        "spu_id", (pl.col("_sum") / pl.col("_n")).alias("own_recovery"), pl.col("_n").fill_null(0).alias("own_recovery_n"))
    comp = (base.join(neighbours, on="spu_id", how="inner")
            .join(closed.rename({"spu_id": "neighbour"}), on="neighbour", how="left")
            .group_by("spu_id").agg((pl.col("_sum").sum() / pl.col("_n").sum()).alias("comp_recovery"),
                                    pl.col("_n").sum().fill_null(0).alias("comp_recovery_n")))
    return (own.join(comp, on="spu_id", how="left", maintain_order="left")
            .with_columns(pl.col("comp_recovery_n").fill_null(0)))


class TreeSum:
    """A fitted ``HistGradientBoostingRegressor``'s answer through scikit-learn's own per-tree kernel, on
    one thread, without ``predict``'s input checks and per-tree Python wrappers. Those cost 0.4 to 0.7 ms a
    call whatever its size, most of a known SPU's price on a request. The kernel and the trees are
    scikit-learn's private parts: ``build`` returns None where they are not as expected, or where the
    answer is not exactly ``predict``'s on the check rows, and ``predict`` is used instead."""

    def __init__(self, kernel, trees: list, baseline: float, known_categories, feature_map):
        self._kernel, self._trees, self._baseline = kernel, trees, baseline
        self._known_categories, self._feature_map = known_categories, feature_map

    @classmethod
    def build(cls, model: HistGradientBoostingRegressor, check_rows: np.ndarray) -> "TreeSum | None":
        try:
            from sklearn.ensemble._hist_gradient_boosting._predictor import _predict_from_raw_data

            known_categories, feature_map = model._bin_mapper.make_known_categories_bitsets()
            trees = [(tree.nodes, tree.raw_left_cat_bitsets) for trees in model._predictors for tree in trees]
            baseline = model._baseline_prediction.ravel()
            if len(baseline) != 1 or any(len(trees) != 1 for trees in model._predictors):
                return None
            fast = cls(_predict_from_raw_data, trees, float(baseline[0]), known_categories, feature_map)
            check = np.asarray(check_rows, dtype=np.float64)
            return fast if np.array_equal(fast(check), model.predict(check), equal_nan=True) else None
        except (ImportError, AttributeError, TypeError, ValueError):
            return None

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        out, tree_out = np.full(len(X), self._baseline), np.empty(len(X))
        for nodes, category_bits in self._trees:  # summed in predict's order: the same floats
            self._kernel(nodes, X, category_bits, self._known_categories, self._feature_map, 1, tree_out)
            out += tree_out
        return out


class RecoveryModel(BaseEstimator):
    """Lower bound of the recovery ratio R / P that holds with probability ``confidence``.

    ``fit(X, y, order)``: ``order`` is each example's pledge date; the latest ``calibration_share`` of the
    dates calibrate (one-sided CQR), the earlier ones train the quantile model that answers."""

    # learning_rate: a 1% quantile's loss moves each leaf by small steps; on the backtest's histories all 200
    # rounds at 0.05 ran (early stopping never fired) and the model still had not settled. At 0.1, on each
    # backtest date's own history (trained on the earlier pseudo-pledge dates, shifted to breach 1% of the
    # latest), the mean bound rose on 2 of 3 dates (May 0.297 -> 0.312, June 0.292 -> 0.304) and held on the
    # third (July 0.264 -> 0.263). Where early stopping does fire, it now stops sooner (the demo: 61 trees, not 98).
    def __init__(self, confidence: float = 0.99, calibration_share: float = 0.3, max_iter: int = 200,
                 learning_rate: float = 0.1, min_samples_leaf: int = 100, random_state: int = 0):
        self.confidence = confidence
        self.calibration_share = calibration_share
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def fit(self, X, y, order):
        X, y, order = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64), np.asarray(order)
        dates = np.unique(order)
        if len(dates) < 2:
            raise ValueError(f"need pseudo-pledges on at least 2 dates to train and calibrate, got {len(dates)}")
        n_cal = min(len(dates) - 1, max(1, round(self.calibration_share * len(dates))))
        calibrate = order >= dates[-n_cal]
        alpha = 1.0 - self.confidence
        # a feature no training example has (e.g. own past recoveries in a short history) carries nothing
        self.keep_ = ~np.all(np.isnan(X[~calibrate]), axis=0)
        X = X[:, self.keep_]
        self.quantile_ = HistGradientBoostingRegressor(
            loss="quantile", quantile=alpha, max_iter=self.max_iter, learning_rate=self.learning_rate,
            min_samples_leaf=self.min_samples_leaf, l2_regularization=1.0, random_state=self.random_state,
        ).fit(X[~calibrate], y[~calibrate])
        residuals = y[calibrate] - self.quantile_.predict(X[calibrate])
        self.residuals_ = np.sort(residuals)
        # The bound must hold on each calibration date, not only on their pool: goods fail together in a
        # bad week, and a pooled shift lets a calm week hide it. Per date, the k-th smallest residual:
        # P(new residual < it) <= (k - 1) / (n + 1) < alpha; the most cautious date sets the shift.
        shifts = []
        for when in dates[-n_cal:]:
            on_date = np.sort(residuals[order[calibrate] == when])
            shifts.append(float(on_date[max(1, math.floor((len(on_date) + 1) * alpha)) - 1]))
        self.exact_ = min(np.sum(order[calibrate] == d) for d in dates[-n_cal:]) + 1 >= 1 / alpha
        self.shift_ = min(shifts)
        # each kept feature's training distribution: what "a typical SPU" has instead
        self.reference_ = reference_quantiles(X[~calibrate])
        self.n_train_, self.n_calibration_ = int((~calibrate).sum()), len(residuals)
        self.calibration_from_ = dates[-n_cal]
        return self

    def _quantile(self, X) -> np.ndarray:
        return self._quantile_kept(np.asarray(X, dtype=np.float64)[:, self.keep_])

    def _quantile_kept(self, X: np.ndarray) -> np.ndarray:
        if len(X) <= SMALL_CALL_ROWS:
            if not hasattr(self, "_small_calls"):
                missing = np.full((1, self.reference_.shape[1]), np.nan)  # checks the missing-value branches too
                self._small_calls = TreeSum.build(self.quantile_, np.vstack([self.reference_, missing]))
            if self._small_calls is not None:
                return self._small_calls(X)
        return self.quantile_.predict(X)

    def _probe_plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The explanation's probes: (column among the kept, value, weight of the column's mean) per probe.
        Two typical values of a column between the same two of the trees' split points on it get the same
        answer from every tree, so one probe stands for both (weighted by how many it stands for), and a
        column no tree splits on moves nothing. Where the trees are not readable, every typical value."""
        if not hasattr(self, "_probes"):
            self._probes = self._pruned_probes() or every_probe(self.reference_, np.arange(self.reference_.shape[1]))
        return self._probes

    def _pruned_probes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        columns, values, weights = [], [], []
        for column, feature in enumerate(np.flatnonzero(self.keep_)):
            splits, typical = self.split_points(feature), self.reference_[:, column]
            if splits is None or np.isnan(typical).any():
                return None
            # a row goes left where value <= threshold: values with one searchsorted(side="left") agree everywhere
            _, first, count = np.unique(np.searchsorted(splits, typical, side="left"),
                                        return_index=True, return_counts=True)
            if len(splits):
                columns += [column] * len(first)
                values += typical[first].tolist()
                weights += (count / len(typical)).tolist()
        return np.array(columns, dtype=np.intp), np.array(values), np.array(weights)

    def __getstate__(self) -> dict:
        # a copy: object.__getstate__ hands back the live __dict__
        state = dict(super().__getstate__())
        for derived in ("_small_calls", "_probes"):  # rebuilt from the fitted model where it is loaded
            state.pop(derived, None)
        return state

    def lower(self, X) -> np.ndarray:
        """The recovery ratio the stock fetches at least, with probability ``confidence``."""
        return self._bound(self._quantile(X))

    def _bound(self, quantile: np.ndarray) -> np.ndarray:
        return np.clip(quantile + self.shift_, 0.0, None)

    def breach_probability(self, X, ratio, quantile: np.ndarray | None = None) -> np.ndarray:
        """P(recovery ratio < ``ratio``) per row, from the calibration residuals (conservative by one).
        ``quantile``: the rows' uncorrected quantile, if already predicted."""
        need = np.asarray(ratio, dtype=np.float64) - (self._quantile(X) if quantile is None else quantile)
        # float noise must not count the residual the bound sits on (many tie: unsold stock is exactly salvage)
        below = np.searchsorted(self.residuals_, need - 1e-9, side="left")
        return np.minimum((below + 1) / (len(self.residuals_) + 1), 1.0)

    def split_points(self, feature: int) -> np.ndarray | None:
        """The sorted thresholds at which the quantile model splits on column ``feature``: between two of
        them (and past the last) the model's answer, and every probe of it, does not change with that
        column. None when the fitted model does not expose its trees."""
        if not self.keep_[feature]:
            return np.array([])
        column = int(np.sum(self.keep_[:feature]))  # its position among the kept columns
        try:
            nodes = [tree.nodes for trees in self.quantile_._predictors for tree in trees]
        except AttributeError:  # scikit-learn's predictors are private: without them, nothing is cached
            return None
        splits = [n["num_threshold"][(n["is_leaf"] == 0) & (n["feature_idx"] == column)] for n in nodes]
        return np.unique(np.concatenate(splits)) if splits else np.array([])

    def drivers(self, X, names=FEATURES, top: int = 3) -> list[list[dict]]:
        return self.explain(X, names, top)[1]

    def explain(self, X, names=FEATURES, top: int = 3) -> tuple[np.ndarray, list[list[dict]]]:
        """The rows' uncorrected quantile, and per row the features that moved its bound most: ``effect`` is
        how much the row's own value adds to the haircut (in units of the market price) against the bound
        with that feature at typical training values."""
        X = np.asarray(X, dtype=np.float64)
        kept = np.flatnonzero(self.keep_)
        effect = np.zeros(X.shape)
        columns, values, weights = self._probe_plan()
        quantile, probed = probe(self._quantile_kept, X[:, kept], columns, values)
        mean_of = np.zeros((len(columns), len(kept)))  # probe -> its column's weighted mean
        mean_of[np.arange(len(columns)), columns] = weights
        effect[:, kept] = (self._bound(probed) - self._bound(quantile)[:, None]) @ mean_of  # > 0: lowers the bound
        return quantile, top_effects(effect, X, names, top)


def _rounded(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)  # as valuation.explain.top_effects reports values


def feature_matrix(frame: pl.DataFrame) -> np.ndarray:
    """FEATURES as a float matrix; days of cover = pledged quantity / the last 90 days' units per day."""
    return frame.with_columns((pl.col("quantity") / pl.col("units_per_day_90")).alias("days_of_cover")) \
        .select(pl.col(FEATURES).cast(pl.Float64)).to_numpy()


def neighbours_from(spu_ids: list[str], hits: list[pl.DataFrame], k: int) -> pl.DataFrame:
    """spu_id -> its ``k`` nearest other SPUs, from index search results (one frame of hits per SPU)."""
    pairs = [(s, n) for s, h in zip(spu_ids, hits) for n in [x for x in h["spu_id"].to_list() if x != s][:k]]
    return pl.DataFrame(pairs, schema={"spu_id": pl.String, "neighbour": pl.String}, orient="row")


class LearnedHaircut:
    """Pricing with the recovery model: each known SPU's market state at the end of the training data,
    and the pledge price = lower recovery ratio x min(value, market price P)."""

    def __init__(self, model: RecoveryModel, state: pl.DataFrame, config: dict, n_examples: int):
        self.model, self.state, self.config, self.n_examples = model, state, config, n_examples
        self._row = {s: i for i, s in enumerate(state["spu_id"].to_list())}
        # numpy copies for the request path (a polars step per request costs milliseconds)
        self._features = feature_matrix(state.with_columns(pl.lit(np.nan).alias("quantity")))
        self._price = state["price"].to_numpy()
        self._per_day = state["units_per_day_90"].to_numpy()
        self._explained: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_explained", "_lock", "_cover_splits")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._explained, self._lock = OrderedDict(), threading.Lock()

    def _explain(self, state_rows: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, list[list[dict]]]:
        """``model.explain`` for known SPUs, remembered per (SPU, days-of-cover interval): a known SPU's
        features change only with the pledged quantity, through days of cover, and the trees' answer (and
        every probe's) is constant between two of their split points on it. Exact, not an approximation;
        the drivers' values are the request's own. Otherwise about 1 ms of scikit-learn tree walking per
        request."""
        if getattr(self, "_cover_splits", None) is None:
            self._cover_splits = self.model.split_points(COVER)
        if self._cover_splits is None:
            return self.model.explain(X)
        cover = X[:, COVER]
        keys = list(zip(state_rows.tolist(), np.where(np.isnan(cover), -1,
                                                      np.searchsorted(self._cover_splits, cover, side="left")).tolist()))
        with self._lock:
            cached = [self._explained.get(key) for key in keys]
        missing = [k for k, hit in enumerate(cached) if hit is None]
        if missing:
            quantile, drivers = self.model.explain(X[missing])
            with self._lock:
                for k, q, d in zip(missing, quantile, drivers):
                    cached[k] = self._explained[keys[k]] = (float(q), d)
                while len(self._explained) > EXPLAINED_CACHE:
                    self._explained.popitem(last=False)
        quantile = np.array([q for q, _ in cached])
        drivers = [[{**d, "value": _rounded(X[k, FEATURES.index(d["feature"])])} for d in row_drivers]
                   for k, (_, row_drivers) in enumerate(cached)]
        return quantile, drivers

    @classmethod
    def train(cls, orders: pl.DataFrame, until: datetime, neighbours: pl.DataFrame,
              config: dict) -> "LearnedHaircut | None":
        """From order history before ``until``. None when the history has too few closed pseudo-pledges."""
        lines = sales_lines(orders)
        examples = pseudo_pledges(lines, until, horizon_days=config["horizon_days"], salvage=config["salvage"],
                                  every_days=config["every_days"], multiples=tuple(config["quantity_multiples"]),
                                  min_active_days=config["min_active_days"])
        if examples.height < config["min_examples"] or examples["pledged_at"].n_unique() < 2:
            return None
        examples = with_history(examples, neighbours, config["horizon_days"])
        model = RecoveryModel(confidence=config["confidence"], calibration_share=config["calibration_share"]).fit(
            feature_matrix(examples), examples["recovery_ratio"].to_numpy(),
            examples["pledged_at"].dt.epoch("s").to_numpy())
        now = eligible(market_snapshot(lines, until), config["min_active_days"])
        state = (now.join(history_now(examples, neighbours, now["spu_id"].to_list()), on="spu_id", how="left",
                          maintain_order="left")
                 .select("spu_id", "price", *[f for f in FEATURES if f != "days_of_cover"]))
        return cls(model, state, config, examples.height)

    def columns(self, cols: dict[str, np.ndarray], floor: float, cap: float) -> dict[str, np.ndarray | list]:
        """On the rows whose SPU (``matched_spu_id``) has a market state, the learned haircut and pledge
        price replace the rule ones (and the rule parts become NaN); also haircut_source, market_price,
        haircut_recovery, haircut_value_gap, breach_probability and haircut_drivers (NaN / None on the
        other rows). ``cols``: numpy columns, one row per priced SPU, with the rule haircut applied."""
        at = [self._row.get(s) for s in cols["matched_spu_id"]]
        rows = np.array([i for i, r in enumerate(at) if r is not None], dtype=np.int64)
        n = len(at)
        out = {name: np.full(n, np.nan) for name in ("market_price", "haircut_recovery", "haircut_value_gap",
                                                     "breach_probability")}
        drivers: list = [None] * n
        haircut, pledge = np.array(cols["haircut"], dtype=np.float64), np.array(cols["pledge_unit_price"], dtype=np.float64)
        at_cap = np.array(cols["haircut_at_cap"], dtype=bool)
        learned = np.zeros(n, dtype=bool)
        if len(rows):
            state_rows = np.array([at[i] for i in rows])
            X = self._features[state_rows].copy()
            X[:, COVER] = np.asarray(cols["quantity"], dtype=np.float64)[rows] / self._per_day[state_rows]
            quantile, row_drivers = self._explain(state_rows, X)
            ratio = self.model._bound(quantile)
            price, value = self._price[state_rows], np.asarray(cols["value"], dtype=np.float64)[rows]
            base = np.minimum(value, price)
            # Not clipped to the cap: a cap there would lend (1 - cap) x value where the bound says less,
            # and the value is least reliable exactly where it exceeds the market price most (up to 4x P
            # on the 104 of the backtest's 6,062 loans the cap lifted; without the lift, 4 fewer breached).
            # At or past the cap the SPU is still rejected as at cap; its pledge price is the bound.
            h = np.clip(1 - ratio * base / value, floor, 1.0)
            haircut[rows], pledge[rows], at_cap[rows] = h, value * (1 - h), h >= cap
            out["market_price"][rows] = price
            out["haircut_recovery"][rows] = 1 - ratio
            out["haircut_value_gap"][rows] = ratio * (1 - base / value)
            out["breach_probability"][rows] = self.model.breach_probability(None, value * (1 - h) / price, quantile)
            for i, d in zip(rows, row_drivers):
                drivers[i] = d
            learned[rows] = True
        for part in HAIRCUT_PARTS:  # a learned haircut replaces the rule sum: its parts are the learned ones
            out[part] = np.where(learned, np.nan, np.asarray(cols[part], dtype=np.float64))
        return {**out, "haircut": haircut, "pledge_unit_price": pledge, "haircut_at_cap": at_cap,
                "haircut_source": np.where(learned, "learned", "rules").astype(object), "haircut_drivers": drivers}

    @staticmethod
    def absent(n: int) -> dict[str, np.ndarray | list]:
        """The learned columns of a model without a learned haircut: rules everywhere."""
        return {"haircut_source": np.full(n, "rules", dtype=object), "haircut_drivers": [None] * n,
                **{c: np.full(n, np.nan) for c in LEARNED_COLUMNS[1:-1]}}
