"""Build the SPU index of a whole catalogue: embed every SPU, index its content vector."""

from __future__ import annotations

import polars as pl

from embeddings.index import SpuIndex
from embeddings.spu import SpuEmbedder, SpuVectors

# Identity and comparables are about what a product *is*: the index keys SPUs by their content vector
# (title + images). History-dependent parts of the SPU vector serve valuation, not identity: with
# them in, an SPU with a long history would score lower against a title-only query than a new one.
INDEXED_PART = "content"


def build_spu_index(embedder: SpuEmbedder, spus: pl.DataFrame, reviews: pl.DataFrame | None = None,
                    orders: pl.DataFrame | None = None, kind: str = "auto") -> tuple[SpuIndex, SpuVectors]:
    embedder.fit(orders)
    vectors = embedder.embed(spus, reviews, orders)
    index = SpuIndex(embedder.encoder.dim, embedder.encoder.fingerprint, kind)
    meta = vectors.frame().join(spus.select("spu_id", "title", *[c for c in ("category", "brand") if c in spus.columns]),
                                on="spu_id", how="left", maintain_order="left")
    index.add(vectors.spu_ids, getattr(vectors, INDEXED_PART), meta)
    index.state = {"embedder": embedder.state(), "indexed_part": INDEXED_PART}
    return index, vectors
