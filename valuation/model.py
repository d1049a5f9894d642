"""The pledge model: encoder + SPU index + value heads + policy, trained, saved and loaded as one.

Saved as one BentoML model (``pledgeval:<version>``) in the local model store (``BENTOML_HOME``), or
as a plain folder. Everything that prices loads it by tag, default ``pledgeval:latest``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import KeysView
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import polars as pl

from embeddings import EncoderConfig, SpuEmbedder, SpuIndex, SpuVectors, create_encoder
from embeddings.encoder import DEFAULT_CONFIG
from embeddings.catalog import build_spu_index
from embeddings.encoder import ImageError
from embeddings.matching import best_candidate
from valuation.attributes import ATTRIBUTES
from valuation.policy import HAIRCUT_PARTS, AdmissionPolicy, HaircutPolicy, currency_of, load_policy
from valuation.recovery import DRIVER_TYPE, LEARNED_COLUMNS, LearnedHaircut, neighbours_from
from valuation.training import ValueModel, forward_prices, launch_prices

MODEL_NAME = "pledgeval"
FORMAT_VERSION = 6  # 2: value heads price from comparables by title and by image; 3: learned haircut;
# 4: the learned haircut's features changed (value interval out, recent activity in); the early warning;
# 5: three sparse title views (char ridge, word ridge, word MLP) and the comparables' min/max feed the heads;
# 6: the learned haircut reads the SPU's buyers (orders' customer_id)
N_COMPARABLES_SHOWN = 3
MAX_BATCH = 1000
IMPOSTOR_SAMPLE = 2000  # known SPUs whose nearest other SPU sets a space's match threshold
ANSWER_COLUMNS = ["value", "value_low", "value_high", "head", "haircut", *HAIRCUT_PARTS, *LEARNED_COLUMNS,
                  "pledge_unit_price", "quantity", "pledge_value", "days_to_sell", "decision", "reasons", "reason_text", "matched_spu_id", "match_score",
                  "category", "comparables", "value_basis"]
SPACE_WORDS = {"content": "title and photo", "title": "title", "image": "photo"}
COMPARABLE_TYPE = pl.List(pl.Struct({"spu_id": pl.String, "title": pl.String, "similarity": pl.Float64,
                                     "price": pl.Float64, "image": pl.String}))
ANSWER_SCHEMA = {name: pl.Float64 for name in ANSWER_COLUMNS} | {
    "head": pl.String, "haircut_source": pl.String, "haircut_drivers": DRIVER_TYPE, "quantity": pl.Int64,
    "decision": pl.String, "reasons": pl.List(pl.String), "reason_text": pl.List(pl.String), "matched_spu_id": pl.String, "category": pl.String,
    "comparables": COMPARABLE_TYPE, "value_basis": pl.String}
# what a valuation (catalogue or new) gives a request; the rest of the answer comes from the request
VALUED_COLUMNS = ("value", "value_low", "value_high", "head", "daily_volatility", "units_per_day", "negativity",
                  "category", "comparables")
ORDER_WINDOW_DAYS = 90  # embeddings.features.order_features' window: velocity is units per day over it


class PricingError(ValueError):
    """A request that cannot be priced; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass
class PledgeModel:
    encoder_config: EncoderConfig
    embedder: SpuEmbedder
    index: SpuIndex
    catalog: SpuVectors
    side: pl.DataFrame          # spu_id, title, category, first image: for answers and thumbnails
    values: ValueModel
    policy: dict
    metrics: dict = field(default_factory=dict)
    data_fingerprint: str = ""
    recovery: LearnedHaircut | None = None  # the learned haircut; None: the rule haircut for every SPU
    # the health monitor's learned early warning (monitoring.warning), trained with the model on the same
    # history and kept in the same bundle so that it is versioned and refused with it; None: rules only
    warning: object | None = None

    # -- training -----------------------------------------------------------------------------
    @classmethod
    def train(cls, tables: dict[str, pl.DataFrame], *, encoder_config: str | Path | EncoderConfig = DEFAULT_CONFIG,
              checkpoint: str | Path | None = None, policy: dict | None = None, cache_path: str | Path | None = None,
              log=print) -> "PledgeModel":
        """``tables``: spus (required), reviews and orders (optional), as data.load_catalog returns them."""
        spus, reviews, orders = tables["spus"], tables.get("reviews"), tables.get("orders")
        if orders is None or orders.height == 0:
            raise ValueError("training needs order history for at least some SPUs (the prices to learn)")
        started = time.monotonic()
        encoder = create_encoder(encoder_config, checkpoint=checkpoint)
        embedder = SpuEmbedder(encoder, cache_path=cache_path, progress=log is not None)
        log and log(f"embedding {spus.height} SPUs and building the SPU index ...")
        index, vectors = build_spu_index(embedder, spus, reviews, orders)
        titles = dict(zip(spus["spu_id"].to_list(), spus["title"].to_list()))

        launch = launch_prices(orders)
        last = orders["ordered_at"].max()
        as_of = last - timedelta(days=30)
        history = embedder.embed(spus.filter(pl.col("spu_id").is_in(launch["spu_id"].implode())), reviews,
                                 orders.filter(pl.col("ordered_at") <= as_of), as_of=as_of)
        log and log(f"fitting value heads on {launch.height} priced SPUs ...")
        values = ValueModel().fit(index, vectors, titles, launch, forward=forward_prices(orders, as_of),
                                  history=history, attributes=_attributes_of(spus))
        side = spus.select("spu_id", "title", *[c for c in ("category", "brand") if c in spus.columns],
                           pl.col("images").list.first().alias("image") if "images" in spus.columns
                           else pl.lit(None, dtype=pl.String).alias("image"))
        if "category" not in side.columns:
            side = side.with_columns(pl.lit(None, dtype=pl.String).alias("category"))
        metrics = {"n_spus": spus.height, "n_priced": launch.height, "train_seconds": round(time.monotonic() - started, 1),
                   "cold_head": values.cold.head_.chosen_, "cold_cv_mae_log": values.cold.head_.cv_mae_,
                   "warm_head": values.warm.head_.chosen_ if values.warm else None,
                   # requests without a photo: their own head, or the cold head (null: not tried), and why
                   "title_only_head": None if values.title_only_mae_ is None else values.cold_title_only is not None,
                   "title_only_mae": values.title_only_mae_}
        model = cls(encoder_config=encoder.config, embedder=embedder, index=index, catalog=vectors, side=side,
                    values=values, policy=policy or load_policy(), metrics=metrics,
                    data_fingerprint=_fingerprint_tables(tables))
        if "recovery" in model.policy:
            log and log("learning the haircut from past pseudo-pledges ...")
            model.recovery = model._learn_haircut(orders, model.policy["recovery"])
            metrics["recovery_examples"] = model.recovery.n_examples if model.recovery else 0
            metrics["recovery_spus"] = model.recovery.state.height if model.recovery else 0
        metrics["train_seconds"] = round(time.monotonic() - started, 1)
        return model

    def _learn_haircut(self, orders: pl.DataFrame, config: dict) -> LearnedHaircut | None:
        """Trained on the order history up to the end of its last day, with comparables from the SPU index."""
        last = orders["ordered_at"].max()
        until = datetime.combine(last.date(), datetime.min.time()) + timedelta(days=1)
        return LearnedHaircut.train(orders, until, self.comparables(config["neighbours"]), config)

    def comparables(self, k: int) -> pl.DataFrame:
        """spu_id -> its ``k`` nearest other known SPUs in the SPU index (content vectors)."""
        hits = self.index.search(self.catalog.content, min(len(self.index), k + 1))
        return neighbours_from(self.catalog.spu_ids, hits, k)

    # -- pricing ------------------------------------------------------------------------------
    def price(self, requests: pl.DataFrame | list[dict]) -> pl.DataFrame:
        """Price SPUs. Columns: spu_id (required), title, images (paths or bytes), reviews (texts),
        quantity (default 1). A row that cannot be priced gets ``error`` and no value; the others are priced."""
        return pl.DataFrame(self.price_rows(requests), schema={"spu_id": pl.String, **ANSWER_SCHEMA, "error": pl.String})

    def price_rows(self, requests: pl.DataFrame | list[dict]) -> list[dict]:
        """``price`` as one dict per request, in order, without building a frame (the service's path)."""
        rows, errors, cols = self._price_columns(requests)
        answers, k = [], 0
        names = [(name, dtype == pl.Float64) for name, dtype in ANSWER_SCHEMA.items()]
        for row, error in zip(rows, errors):
            if error is not None:
                answers.append({"spu_id": row["spu_id"], **{name: None for name, _ in names}, "error": error})
                continue
            answer = {"spu_id": row["spu_id"]}
            for name, is_float in names:
                v = cols[name][k]
                answer[name] = (None if v != v else float(v)) if is_float else _plain(v)
            answer["error"] = None
            answers.append(answer)
            k += 1
        return answers

    def _price_columns(self, requests: pl.DataFrame | list[dict]) -> tuple[list[dict], list, dict]:
        """The requests as dicts, an error (or None) per request, and the answer columns of the priced
        ones, in request order, as numpy arrays or lists (NaN where a float is not known)."""
        # Rows stay Python values: a frame would coerce a batch mixing image paths and bytes to one type.
        rows = requests.to_dicts() if isinstance(requests, pl.DataFrame) else [dict(r) for r in requests]
        if len(rows) > MAX_BATCH:
            raise PricingError("requests", f"{len(rows)} items; at most {MAX_BATCH} per call")
        known = self.known_spu_ids
        errors: list[str | None] = [None] * len(rows)
        new_rows, new_vectors = [], []
        for i, row in enumerate(rows):
            try:
                _check_request(row, known)
                if row["spu_id"] not in known:
                    new_rows.append(i)
            except PricingError as exc:
                errors[i] = str(exc)
        matched: dict[int, tuple[str | None, float, str]] = {}
        if new_rows:
            new_rows, new_vectors = self._embed_new([rows[i] for i in new_rows], new_rows, errors)
            spaces = [match_space(t, m) for t, m in zip(new_vectors.has["title"], new_vectors.has["image"])] \
                if new_vectors else []
            for space in set(spaces):
                at = [k for k, s in enumerate(spaces) if s == space]
                found = self.match_index(space).search(getattr(new_vectors, space)[at], 10)
                for k, hits in zip(at, found):
                    i = new_rows[k]
                    hits = hits.with_columns(pl.Series("title", [self._titles.get(h) for h in hits["spu_id"]],
                                                       dtype=pl.String))
                    matched[i] = (*best_candidate(rows[i].get("title"), hits), space)
        return rows, errors, self._answer(rows, errors, new_vectors, matched)

    def match_index(self, space: str) -> SpuIndex:
        """The known SPUs' vectors a query is compared with: ``content`` (title and image), ``title`` or
        ``image``. A query is compared with vectors made of what it has itself: a title alone scores about
        0.7-0.86 against its own SPU's title-and-image vector, under the match threshold, but 1.0 against
        its title vector."""
        return self._match_space(space)[0]

    def match_threshold(self, space: str) -> float:
        """The score a match needs in ``space``. Content vectors (and title vectors of a catalogue without
        images, the same vectors) use the policy's threshold, calibrated on spelling variants by
        bench/matching.py. A title or photo space of its own must also clear the score at which 1% of known
        SPUs already have another known SPU: an image tower that does not tell goods apart (an untrained
        one scores every pair of photos near 1.0) must not turn a new product's photo into a known SPU.
        Where that score is 0.99 or more, the space matches nothing (the threshold is above 1)."""
        return self._match_space(space)[1]

    def _match_space(self, space: str) -> tuple[SpuIndex, float]:
        policy = self.policy.get("matching", {}).get("threshold", 0.9)
        if space == "content" or (space == "title" and not self.catalog.has["image"].any()):
            return self.index, policy  # without images in the catalogue, content vectors are the title vectors
        spaces = self.__dict__.setdefault("_match_spaces", {})
        if space not in spaces:
            present = np.flatnonzero(self.catalog.has[space])
            index = SpuIndex(self.index.dim, self.index.fingerprint, kind=self.index.kind)
            threshold = np.inf
            if len(present) > 1:
                ids = [self.catalog.spu_ids[i] for i in present]
                vectors = getattr(self.catalog, space)[present]
                index.add(ids, vectors)
                sample = np.random.default_rng(0).choice(len(present), min(len(present), IMPOSTOR_SAMPLE), replace=False)
                scores, found = index.search_arrays(vectors[sample].astype(np.float32), 2)
                own = index.meta["id"].to_numpy()[sample]  # an SPU's own vector may tie with a twin's
                other = np.where(found[:, 0] == own, scores[:, 1], scores[:, 0])
                impostor = float(np.quantile(other, 0.99))
                threshold = max(policy, impostor) if impostor < 0.99 else np.inf
            spaces[space] = (index, threshold)
        return spaces[space]

    def similar(self, title: str | None, images: list, k: int) -> pl.DataFrame:
        """The top-k known SPUs for a title and/or images (spu_id, score), compared in the space of what
        the query has, as a new SPU's match is."""
        space = match_space(bool(title and title.strip()), bool(images))
        return self.match_index(space).search(self.embedder.query(title, images), k)[0]

    def warm_up(self) -> None:
        """Value every known SPU and build the match indexes now, not on a desk's first request."""
        self._catalog_columns()
        for space in ("title", "image"):
            self.match_threshold(space)

    def _embed_new(self, rows: list[dict], positions: list[int], errors: list):
        images = []
        for row, position in zip(rows, positions):
            try:
                images.append([_image_bytes(img) for img in (row.get("images") or [])])
            except ImageError as exc:
                images.append(None)
                errors[position] = f"images: {exc}"
        keep = [k for k, imgs in enumerate(images) if imgs is not None]
        rows, positions, images = [rows[k] for k in keep], [positions[k] for k in keep], [images[k] for k in keep]
        if not rows:
            return [], None
        # keyed by request position: two new items may share an spu_id (several listings of one new SPU)
        spus = pl.DataFrame({"spu_id": [str(p) for p in positions], "title": [r.get("title") or "" for r in rows],
                             "images": images}, schema={"spu_id": pl.String, "title": pl.String,
                                                        "images": pl.List(pl.Binary)})
        reviews = [(str(p), text) for r, p in zip(rows, positions) for text in (r.get("reviews") or [])]
        review_frame = pl.DataFrame(reviews, schema={"spu_id": pl.String, "text": pl.String}, orient="row") \
            .with_columns(pl.lit(None, dtype=pl.Int64).alias("rating")) if reviews else None
        try:
            return positions, self.embedder.embed(spus, review_frame)
        except ImageError:
            pass  # find the bad image(s) one request at a time, so the others are still priced
        good, parts = [], []
        for k, position in enumerate(positions):
            try:
                parts.append(self.embedder.embed(spus[k:k + 1], review_frame.filter(
                    pl.col("spu_id") == spus["spu_id"][k]) if review_frame is not None else None))
                good.append(position)
            except ImageError as exc:
                errors[position] = f"images: {exc}"
        if not parts:
            return [], None
        return good, SpuVectors.concat(parts)

    def _answer(self, rows, errors, new_vectors, matched) -> dict:
        catalog_rows, new_ids = [], []  # (row, spu_id whose catalogue valuation applies, match score)
        for i, row in enumerate(rows):
            if errors[i] is not None:
                continue
            if i not in matched:  # a known spu_id: its catalogue row, history included
                catalog_rows.append((i, row["spu_id"], None))
            elif matched[i][0] is not None and matched[i][1] >= self.match_threshold(matched[i][2]):
                # a new id for a known SPU
                catalog_rows.append((i, matched[i][0], matched[i][1]))
            else:
                new_ids.append(i)
        if not catalog_rows and not new_ids:
            return {}
        # known rows from the catalogue's valuations, new ones valued now; then back in request order
        catalog = self._catalog_columns()
        at = np.array([self._catalog_row[s] for _, s, _ in catalog_rows], dtype=np.int64)
        valued = _columns(self._value(new_vectors.take([str(i) for i in new_ids]),
                                      [rows[i].get("title") or "" for i in new_ids], known=False,
                                      given=[rows[i] for i in new_ids])) if new_ids else None
        order = [r for r, _, _ in catalog_rows] + new_ids
        back = np.argsort(order, kind="stable")
        cols = {name: (np.concatenate([catalog[name][at], valued[name]]) if valued is not None else catalog[name][at])[back]
                for name in VALUED_COLUMNS}
        request_rows = [order[k] for k in back]
        cols["matched_spu_id"] = np.array([s for _, s, _ in catalog_rows] + [None] * len(new_ids), dtype=object)[back]
        cols["match_score"] = np.array([np.nan if m is None else m for _, _, m in catalog_rows]
                                       + [float(matched[i][1]) for i in new_ids], dtype=np.float64)[back]
        cols["matched"] = np.array([s is not None for s in cols["matched_spu_id"]], dtype=bool)
        cols["quantity"] = np.array([int(rows[r].get("quantity") or 1) for r in request_rows], dtype=np.int64)
        cols.update(self._haircut.columns(cols))
        cols.update(self.recovery.columns(cols, self._haircut.config["floor"], self._haircut.config["cap"])
                    if self.recovery is not None else LearnedHaircut.absent(len(request_rows)))
        cols.update(self._admission.columns(cols))
        cols["pledge_value"] = cols["pledge_unit_price"] * cols["quantity"]
        cols["value_basis"] = [
            value_basis(head=head, comparables=comparables, match=matched.get(r),
                        matched=r in matched and spu is not None,
                        threshold=self.match_threshold(matched[r][2]) if r in matched else None,
                        matched_title=self._titles.get(spu), currency=currency_of(self.policy))
            for r, head, comparables, spu in zip(request_rows, cols["head"], cols["comparables"], cols["matched_spu_id"])]
        return cols

    def _catalog_columns(self) -> dict[str, np.ndarray]:
        """Every known SPU valued once (value, interval, comparables, history signals), as numpy columns in
        the catalogue's order, and kept: a request for a known SPU then only applies its quantity-dependent
        haircut and admission."""
        if getattr(self, "_catalog_cols", None) is None:
            titles = [self._titles.get(s) or "" for s in self.catalog.spu_ids]
            self._catalog_cols = _columns(self._value(self.catalog, titles, known=True))
        return self._catalog_cols

    @property
    def _titles(self) -> dict[str, str | None]:
        """spu_id -> title of every known SPU."""
        if getattr(self, "_title_of", None) is None:
            self._title_of = dict(zip(self.side["spu_id"].to_list(), self.side["title"].to_list()))
        return self._title_of

    @property
    def _side_attributes(self) -> dict[str, dict]:
        """spu_id -> category and brand of every known SPU."""
        if getattr(self, "_attributes", None) is None:
            self._attributes = _attributes_of(self.side)
        return self._attributes

    @property
    def _haircut(self) -> HaircutPolicy:
        return HaircutPolicy(self.policy)

    @property
    def _admission(self) -> AdmissionPolicy:
        return AdmissionPolicy(self.policy)

    @property
    def known_spu_ids(self) -> KeysView[str]:
        return self._catalog_row.keys()

    @property
    def _catalog_row(self) -> dict[str, int]:
        """A known SPU's row in ``_catalog_columns()`` (which follows the catalogue's order)."""
        if getattr(self, "_rows", None) is None:
            self._rows = {s: i for i, s in enumerate(self.catalog.spu_ids)}
        return self._rows

    def _value(self, vectors: SpuVectors, titles: list[str], known: bool, given: list[dict] | None = None) -> pl.DataFrame:
        """``given``: new SPUs' requests, whose category and brand (where sent) the value and haircut use."""
        side = self._side_attributes
        if known:
            given = [side.get(s, {}) for s in vectors.spu_ids]
        values, comparables = self.values.predict(self.index, vectors, titles, exclude_self=True, attributes=given)
        history = vectors.order_features
        # a known SPU has its own category; a new one the request's, else its nearest comparable's
        category = [side.get(s, {}).get("category") if known else
                    (g or {}).get("category") or (side.get(ids[0], {}).get("category") if ids else None)
                    for s, ids, g in zip(vectors.spu_ids, comparables.spu_ids, given or [None] * len(vectors.spu_ids))]
        return pl.DataFrame({
            "spu_id": vectors.spu_ids,
            "head": values["head"],
            "value": np.exp(values["log_value"].to_numpy()),
            "value_low": np.exp(values["log_low"].to_numpy()),
            "value_high": np.exp(values["log_high"].to_numpy()),
            "daily_volatility": history["volatility"],
            "units_per_day": history["sales_velocity"].exp() - 1,
            "negativity": [None if np.isnan(x) else float(x) for x in vectors.negativity],
            "category": pl.Series(category, dtype=pl.String),
            "comparables": [self._comparables(ids, sims, prices) for ids, sims, prices in
                            zip(comparables.spu_ids, comparables.similarity, comparables.log_price)],
        })

    def _comparables(self, ids, sims, log_prices) -> list[dict]:
        shown = list(zip(ids, sims, log_prices))[:N_COMPARABLES_SHOWN]
        side = {r["spu_id"]: r for r in self.side.filter(pl.col("spu_id").is_in([s for s, _, _ in shown]))
                .iter_rows(named=True)}
        return [{"spu_id": s, "title": side.get(s, {}).get("title"), "similarity": round(float(sim), 4),
                 "price": round(float(np.exp(lp)), 4), "image": side.get(s, {}).get("image")}
                for s, sim, lp in shown]

    # -- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = asdict(self.encoder_config)
        if self.encoder_config.checkpoint:
            shutil.copyfile(self.encoder_config.checkpoint, folder / "image-tower.pt")
            config["checkpoint"] = "image-tower.pt"
        self.index.save(folder / "index")
        np.savez(folder / "catalog.npz", **self.catalog.arrays())
        self.catalog.order_features.write_parquet(folder / "order_features.parquet")
        self.side.write_parquet(folder / "side.parquet")
        joblib.dump(self.values, folder / "values.joblib")
        joblib.dump(self.recovery, folder / "recovery.joblib")
        joblib.dump(self.warning, folder / "warning.joblib")
        (folder / "model.json").write_text(json.dumps({
            "format": FORMAT_VERSION, "encoder": config, "fingerprint": self.embedder.encoder.fingerprint,
            "embedder": self.embedder.state(), "policy": self.policy, "metrics": self.metrics,
            "data_fingerprint": self.data_fingerprint}, indent=1, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "PledgeModel":
        folder = Path(folder)
        meta = json.loads((folder / "model.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"model at {folder} has format {meta.get('format')}; this version reads format "
                             f"{FORMAT_VERSION}: train it again (pledgeval train, or pledgeval demo)")
        config = dict(meta["encoder"])
        if config.get("checkpoint"):
            config["checkpoint"] = str(folder / config["checkpoint"])
        encoder_config = EncoderConfig(**config)
        encoder = create_encoder(encoder_config)
        if encoder.fingerprint != meta["fingerprint"]:
            raise ValueError(f"model at {folder}: encoder fingerprint {encoder.fingerprint} does not match the "
                             f"saved {meta['fingerprint']}")
        embedder = SpuEmbedder(encoder).load_state(meta["embedder"])
        index = SpuIndex.load(folder / "index", fingerprint=encoder.fingerprint)
        catalog = SpuVectors.from_arrays(np.load(folder / "catalog.npz", allow_pickle=False),
                                         pl.read_parquet(folder / "order_features.parquet"))
        return cls(encoder_config=encoder_config, embedder=embedder, index=index, catalog=catalog,
                   side=pl.read_parquet(folder / "side.parquet"), values=joblib.load(folder / "values.joblib"),
                   policy=meta["policy"], metrics=meta["metrics"], data_fingerprint=meta["data_fingerprint"],
                   recovery=joblib.load(folder / "recovery.joblib"), warning=joblib.load(folder / "warning.joblib"))

    def save_to_store(self, labels: dict | None = None) -> str:
        """Save as a BentoML model ``pledgeval:<version>``; returns the tag."""
        import bentoml

        metadata = {"data_fingerprint": self.data_fingerprint, "encoder_fingerprint": self.embedder.encoder.fingerprint,
                    "metrics": json.loads(json.dumps(self.metrics, default=str)),
                    "encoder": self.encoder_config.name, "n_spus": len(self.catalog.spu_ids)}
        with bentoml.models.create(MODEL_NAME, labels=labels or {}, metadata=metadata) as bento_model:
            self.save(bento_model.path)
        return str(bento_model.tag)

    @classmethod
    def load_from_store(cls, tag: str = f"{MODEL_NAME}:latest") -> "PledgeModel":
        import bentoml

        return cls.load(bentoml.models.get(tag).path)


def _attributes_of(spus: pl.DataFrame) -> dict[str, dict]:
    """spu_id -> its catalogue attributes (ATTRIBUTES), None where the table lacks one."""
    columns = [pl.col(name) if name in spus.columns else pl.lit(None, dtype=pl.String).alias(name) for name in ATTRIBUTES]
    return {row.pop("spu_id"): row for row in spus.select("spu_id", *columns).iter_rows(named=True)}


def _columns(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """The valued columns as numpy arrays: floats with NaN for null, anything else as objects."""
    out = {}
    for name in VALUED_COLUMNS:
        column = frame[name]
        if column.dtype.is_numeric():
            out[name] = column.cast(pl.Float64).to_numpy()
        else:
            values = np.empty(frame.height, dtype=object)
            values[:] = column.to_list()
            out[name] = values
    return out


def _plain(value):
    """A numpy scalar as the Python value a JSON encoder takes; a list (of dicts) as a fresh copy, so that
    a caller that edits its answer never edits the cached catalogue valuation it came from."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [dict(x) if isinstance(x, dict) else x for x in value]
    return value


def match_space(has_title: bool, has_image: bool) -> str:
    """Which known-SPU vectors a query with these modalities is compared with."""
    return "content" if has_title and has_image else ("title" if has_title else "image")


def value_basis(*, head: str, comparables: list[dict] | None, match: tuple | None, matched: bool,
                threshold: float | None, matched_title: str | None, currency: str) -> str:
    """What drove the value, in a sentence a credit officer reads: the SPU it was taken to be (or why
    none), the head that valued it, and the prices of the comparables shown beside it. ``match``: a new
    id's best candidate (spu_id, score, space), None for a known id; ``matched``: whether it was taken."""
    source = ("its own recent sales prices, its listing and comparables' prices" if head == "warm"
              else "its listing (title, photos, reviews) and comparables' prices")
    prices = [c["price"] for c in comparables or [] if c.get("price") is not None]
    shown = (f" The {len(prices)} closest priced comparables sell at {currency} {min(prices):,.2f} to "
             f"{currency} {max(prices):,.2f}." if len(prices) > 1 else
             f" The closest priced comparable sells at {currency} {prices[0]:,.2f}." if prices else "")
    if match is None:
        return f"Known SPU, valued by the model from {source}.{shown}"
    words = SPACE_WORDS[match[2]]
    if matched:
        return (f"Taken to be known SPU {match[0]} (\u201c{matched_title}\u201d): {words} similarity "
                f"{match[1]:.2f}, at or above the match threshold {threshold:.2f}. That SPU's value applies, "
                f"from {source}.{shown}")
    if match[0] is None:
        closest = "the catalogue is empty"
    elif match[1] > 0:
        closest = f"the closest, {match[0]}, scores {match[1]:.2f} by {words}"
    else:  # embeddings.matching passes over candidates whose titles name another colour, number or size
        closest = f"the closest by {words} name another colour, number or size"
    needs = (f"a match needs {threshold:.2f}" if threshold <= 1 else
             f"this model's {words} vectors do not tell known SPUs apart, so a {words} alone never matches")
    return f"New SPU: no known SPU matches ({closest}; {needs}). Valued by the model from {source}.{shown}"


def _check_request(row: dict, known: KeysView[str]) -> None:
    spu_id = row.get("spu_id")
    if spu_id is None or not isinstance(spu_id, str) or not spu_id.strip():
        raise PricingError("spu_id", f"must be non-empty text, got {spu_id!r}")
    quantity = row.get("quantity")
    if quantity is not None:
        if isinstance(quantity, bool) or not isinstance(quantity, (int, np.integer)) or quantity <= 0:
            raise PricingError("quantity", f"must be a whole number > 0, got {quantity!r}")
    for name in ("title", *ATTRIBUTES):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise PricingError(name, "must be text")
    for name in ("images", "reviews"):
        value = row.get(name)
        if value is not None and not isinstance(value, (list, tuple)):
            raise PricingError(name, "must be a list")
    if any(not isinstance(r, str) for r in row.get("reviews") or []):
        raise PricingError("reviews", "each review must be text")
    title = row.get("title")
    if spu_id not in known and not (title and title.strip()) and not row.get("images"):
        raise PricingError("spu_id", f"unknown spu_id '{spu_id}': give a title or an image to price a new SPU")


def _image_bytes(image) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    try:
        return Path(image).read_bytes()
    except (OSError, TypeError) as exc:
        raise ImageError(f"cannot read image {str(image)[:200]!r}: {exc}") from exc


def _fingerprint_tables(tables: dict[str, pl.DataFrame]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tables):
        frame = tables[name]
        digest.update(name.encode())
        digest.update(str(frame.shape).encode())
        digest.update(frame.hash_rows(seed=0).to_numpy().tobytes() if frame.height else b"")
    return digest.hexdigest()[:16]
