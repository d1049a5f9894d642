"""From an SPU's title, images, reviews and orders to one L2-normalised SPU vector.

The fusion, in one place
------------------------
    content  = normalise(mean of the SPU's title vector and its image vectors that exist)   (D dims)
    reviews  = normalise(mean of its review vectors), or zeros when it has no review        (D dims)
    orders   = standardised order features (price level, volatility, velocity, cancel rate),
               divided by sqrt(4), or zeros when it has no order history                     (4 dims)
    spu      = normalise([1.0 * content, 0.35 * reviews, 0.35 * orders])

Title and image share one space (the image tower is trained against the text tower), so a missing
image or a missing title still leaves a usable content vector. Missing modalities are zeros, flagged
in ``SpuVectors.has``, never imputed. The SPU index keys SPUs by ``content`` (see embeddings.catalog),
and a query by title and/or image is the content vector of what it has.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from embeddings.cache import VectorCache
from embeddings.encoder import Encoder, ImageInput, load_image
from embeddings.features import ORDER_FEATURES, OrderScaler, negativity_direction, order_features, review_negativity

REVIEW_WEIGHT = 0.35
ORDER_WEIGHT = 0.35


@dataclass
class SpuVectors:
    spu_ids: list[str]
    vectors: np.ndarray          # (n, D + D + 4), L2-normalised
    content: np.ndarray          # (n, D): title/image part alone
    image: np.ndarray            # (n, D): mean image vector (zeros where none)
    title: np.ndarray            # (n, D)
    has: dict[str, np.ndarray]   # modality -> bool per SPU: title, image, reviews, orders
    negativity: np.ndarray       # (n,) mean review negativity 0..1, NaN where no reviews
    order_features: pl.DataFrame  # raw features per SPU (nulls where no history)
    rating: np.ndarray = None    # (n,) mean review rating, NaN where no reviews
    n_reviews: np.ndarray = None  # (n,) review count

    def __post_init__(self):
        n = len(self.spu_ids)
        if self.rating is None:
            self.rating = np.full(n, np.nan)
        if self.n_reviews is None:
            self.n_reviews = np.zeros(n)

    @classmethod
    def array_fields(cls) -> tuple[str, ...]:
        """The per-SPU arrays (one row per SPU), declared once by the dataclass itself: take, concat, save
        and load all go through this list, so a new modality is one new field."""
        return tuple(f.name for f in fields(cls) if f.type in ("np.ndarray", np.ndarray))

    def take(self, spu_ids: list[str]) -> "SpuVectors":
        """The rows of these SPUs, in this order."""
        position = {s: i for i, s in enumerate(self.spu_ids)}
        missing = [s for s in spu_ids if s not in position]
        if missing:
            raise KeyError(f"no vectors for spu_id {missing[:5]}")
        rows = np.array([position[s] for s in spu_ids], dtype=np.int64)
        return SpuVectors(spu_ids=list(spu_ids), has={k: v[rows] for k, v in self.has.items()},
                          order_features=pl.DataFrame({"spu_id": list(spu_ids)}).join(
                              self.order_features, on="spu_id", how="left", maintain_order="left"),
                          **{name: getattr(self, name)[rows] for name in self.array_fields()})

    @classmethod
    def concat(cls, parts: list["SpuVectors"]) -> "SpuVectors":
        if len(parts) == 1:
            return parts[0]
        return cls(spu_ids=[s for p in parts for s in p.spu_ids],
                   has={k: np.concatenate([p.has[k] for p in parts]) for k in parts[0].has},
                   order_features=pl.concat([p.order_features.select("spu_id", *ORDER_FEATURES) for p in parts],
                                            how="vertical_relaxed"),
                   **{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.array_fields()})

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array by name (``has`` as ``has_<modality>``), for ``np.savez``; ``order_features`` apart."""
        return {"spu_ids": np.array(self.spu_ids), **{n: getattr(self, n) for n in self.array_fields()},
                **{f"has_{k}": v for k, v in self.has.items()}}

    @classmethod
    def from_arrays(cls, arrays, order_features: pl.DataFrame) -> "SpuVectors":
        """The inverse of ``arrays`` (an ``np.load`` result or a dict)."""
        names = list(arrays.files if hasattr(arrays, "files") else arrays)
        return cls(spu_ids=arrays["spu_ids"].tolist(), order_features=order_features,
                   has={k[4:]: arrays[k] for k in names if k.startswith("has_")},
                   **{n: arrays[n] for n in cls.array_fields() if n in names})

    def frame(self) -> pl.DataFrame:
        """Per-SPU side data for the index's metadata file."""
        return pl.DataFrame({"spu_id": self.spu_ids, **{f"has_{k}": v for k, v in self.has.items()},
                             "negativity": self.negativity}).join(self.order_features, on="spu_id", how="left", maintain_order="left")


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norms > 0, x / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def fuse(content: np.ndarray, reviews: np.ndarray, orders: np.ndarray) -> np.ndarray:
    parts = [content, REVIEW_WEIGHT * reviews, ORDER_WEIGHT * orders / np.sqrt(len(ORDER_FEATURES))]
    return _normalise(np.concatenate(parts, axis=1))


class SpuEmbedder:
    """Turns catalogue tables into SPU vectors; ``fit`` learns the order-feature scaling."""

    def __init__(self, encoder: Encoder, cache_path: str | Path | None = None, batch_size: int = 256,
                 progress: bool = False):
        self.encoder = encoder
        self.batch_size = batch_size
        self.progress = progress
        self.cache = VectorCache(cache_path, encoder.fingerprint) if cache_path else None
        self.negative_, self.positive_ = negativity_direction(encoder.encode_texts)
        self.scaler_: OrderScaler | None = None

    @property
    def dim(self) -> int:
        return 2 * self.encoder.dim + len(ORDER_FEATURES)

    # -- encoding with the cache --------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str], kind: str = "text") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        compute = lambda items: self.encoder.encode_texts(items, self.batch_size, self.progress)  # noqa: E731
        if self.cache is None:
            return compute(list(texts))
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        return self.cache.get_or_compute(kind, keys, list(texts), compute)

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        compute = lambda items: self.encoder.encode_images(items, 64, self.progress)  # noqa: E731
        if self.cache is None:
            return compute(list(images))
        keys = [_image_key(img) for img in images]
        return self.cache.get_or_compute("image", keys, list(images), compute)

    # -- SPUs ---------------------------------------------------------------------------------
    def fit(self, orders: pl.DataFrame | None) -> "SpuEmbedder":
        features = order_features(orders) if orders is not None and orders.height else \
            pl.DataFrame(schema={"spu_id": pl.String, **{f: pl.Float64 for f in ORDER_FEATURES}})
        self.scaler_ = OrderScaler().fit(features)
        return self

    def embed(self, spus: pl.DataFrame, reviews: pl.DataFrame | None = None,
              orders: pl.DataFrame | None = None, as_of=None) -> SpuVectors:
        """``as_of``: order features from the window before this time (default: the last order)."""
        if self.scaler_ is None:
            self.fit(orders)
        ids = spus["spu_id"].to_list()
        image_lists = spus["images"].to_list() if "images" in spus.columns else [[] for _ in ids]
        title, image, content, has_title, has_image = self.content_part(spus["title"].to_list(), image_lists)
        review_vec, negativity, rating, has_reviews, counts = self.review_part(ids, reviews)

        raw = pl.DataFrame({"spu_id": ids})
        if orders is not None and orders.height:
            raw = raw.join(order_features(orders.filter(pl.col("spu_id").is_in(ids)), as_of=as_of), on="spu_id",
                           how="left", maintain_order="left")
        else:
            raw = raw.with_columns(*(pl.lit(None, dtype=pl.Float64).alias(f) for f in ORDER_FEATURES))
        has_orders = raw["price_level"].is_not_null().to_numpy()
        order_vec = self.scaler_.transform(raw) * has_orders[:, None]

        return SpuVectors(
            spu_ids=ids, vectors=fuse(content, review_vec, order_vec), content=content, image=image, title=title,
            has={"title": has_title, "image": has_image, "reviews": has_reviews, "orders": has_orders},
            negativity=negativity, order_features=raw, rating=rating,
            n_reviews=counts.astype(float))

    def content_part(self, titles: list[str | None], image_lists: list[list[ImageInput] | None]) -> tuple[np.ndarray, ...]:
        """(title, image, content vectors, has_title, has_image) of SPUs' titles and images (paths, bytes)."""
        titles = [t or "" for t in titles]
        has_title = np.array([bool(t.strip()) for t in titles], dtype=bool)
        title = self.encode_texts(titles) * has_title[:, None]
        flat = [(i, p) for i, paths in enumerate(image_lists) for p in (paths or [])]
        image = np.zeros_like(title)
        has_image = np.zeros(len(titles), dtype=bool)
        if flat:
            vectors = self.encode_images([p for _, p in flat])
            owner = np.array([i for i, _ in flat])
            np.add.at(image, owner, vectors)
            has_image[owner] = True
            image = _normalise(image)
        return title, image, _normalise(title + image), has_title, has_image

    def review_part(self, ids: list[str], reviews: pl.DataFrame | None) -> tuple[np.ndarray, ...]:
        """(review vectors, negativity, rating, has_reviews, review counts) per SPU of ``ids``."""
        review_vec = np.zeros((len(ids), self.encoder.dim), dtype=np.float32)
        negativity = np.full(len(ids), np.nan, dtype=np.float32)
        rating = np.full(len(ids), np.nan)
        counts = np.zeros(len(ids), dtype=np.int64)
        if reviews is None or not reviews.height:
            return review_vec, negativity, rating, counts > 0, counts
        position = {s: i for i, s in enumerate(ids)}
        mine = reviews.filter(pl.col("spu_id").is_in(ids))
        if not mine.height:
            return review_vec, negativity, rating, counts > 0, counts
        vectors = self.encode_texts(mine["text"].to_list(), kind="review")
        owner = np.array([position[s] for s in mine["spu_id"]])
        np.add.at(review_vec, owner, vectors)
        counts = np.bincount(owner, minlength=len(ids))
        scores = np.bincount(owner, weights=review_negativity(vectors, self.negative_, self.positive_),
                             minlength=len(ids))
        has_reviews = counts > 0
        negativity[has_reviews] = scores[has_reviews] / counts[has_reviews]
        ratings = np.bincount(owner, weights=mine["rating"].to_numpy().astype(float), minlength=len(ids))
        rating[has_reviews] = ratings[has_reviews] / counts[has_reviews]
        return _normalise(review_vec), negativity, rating, has_reviews, counts

    def query(self, title: str | None = None, images: Sequence[ImageInput] = ()) -> np.ndarray:
        """The content vector of a title and/or images: what the SPU index is searched with."""
        if not (title and title.strip()) and not images:
            raise ValueError("a query needs a title or an image")
        content = np.zeros((1, self.encoder.dim), dtype=np.float32)
        if title and title.strip():
            content += self.encode_texts([title])
        if images:
            content += _normalise(self.encode_images(list(images)).sum(axis=0, keepdims=True))
        return _normalise(content)

    def state(self) -> dict:
        return {"order_scaler": self.scaler_.to_dict() if self.scaler_ else None}

    def load_state(self, state: dict) -> "SpuEmbedder":
        if state.get("order_scaler"):
            self.scaler_ = OrderScaler.from_dict(state["order_scaler"])
        return self


def _image_key(image: ImageInput) -> str:
    if isinstance(image, (bytes, bytearray)):
        return hashlib.sha256(bytes(image)).hexdigest()
    if isinstance(image, (str, Path)):
        try:
            return hashlib.sha256(Path(image).read_bytes()).hexdigest()
        except OSError:
            load_image(image)  # raises the ImageError that names the problem
            raise
    return hashlib.sha256(load_image(image).tobytes()).hexdigest()
