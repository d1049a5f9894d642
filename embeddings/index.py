"""The SPU index: FAISS over SPU vectors, stable int64 ids mapped to spu_id, metadata in parquet.

Inner product on L2-normalised vectors (= cosine). The FAISS structure is chosen by size: exact
(``flat``) below ``EXACT_BELOW`` vectors, ``hnsw`` above; on request for memory-bound catalogues ``ivfsq``
(inverted lists of 8-bit scalar-quantised vectors: a quarter of flat's memory, recall@10 0.97 on the
index bench) or ``ivfpq`` (product-quantised codes, 64 bytes a vector: the smallest, but recall@10
under 0.5 on the bench's vectors, so only where memory rules everything else out).

An IVF index built from vector shards may be split into **parts** (``from_shards(parts=N)``): N IVF
indexes sharing one trained quantiser, each holding the vectors of a contiguous run of shards, searched
together through ``faiss.IndexShards`` (each part's top k, merged). Each part is its own file, so a
machine can load only some of them (``load(parts=[k])``) when the whole does not fit in its memory.

On disk a saved index is a folder with ``manifest.json`` pointing at one generation of files
(``index-<gen>.faiss`` or ``index-<gen>-p<k>.faiss`` per part, ``meta-<gen>.parquet``). A save writes a
new generation, then swaps the manifest with an atomic rename: a crash at any point leaves the previous
generation loadable.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from data.files import write_atomic

EXACT_BELOW = 50_000
KINDS = ("auto", "flat", "hnsw", "ivfsq", "ivfpq")
IVF_KINDS = ("ivfsq", "ivfpq")  # trained on the vectors, and keep our ids in a hashtable direct map
FORMAT_VERSION = 2  # 2: an index in parts (``part_files``); an index in one file is still written as 1


class IndexMismatchError(ValueError):
    """An index built by a different encoder (or of another shape) than the one in use."""


class UnknownSpuError(KeyError):
    def __str__(self) -> str:
        return f"unknown spu_id: {', '.join(map(str, self.args[0]))}"


class SpuIndex:
    def __init__(self, dim: int, fingerprint: str, kind: str = "auto", *, hnsw_m: int = 32,
                 ef_search: int = 128, nprobe: int = 16):
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        self.dim, self.fingerprint, self.kind = dim, fingerprint, kind
        self.hnsw_m, self.ef_search, self.nprobe = hnsw_m, ef_search, nprobe
        self.meta = pl.DataFrame(schema={"id": pl.Int64, "spu_id": pl.String})
        self._index: faiss.Index | None = None
        # an index in parts: _index is the faiss.IndexShards over _parts, and part k holds the ids from
        # _part_starts[k] up to the next part's start (ids only grow, so a new SPU goes to the last part)
        self._parts: list[faiss.Index] | None = None
        self._part_starts: np.ndarray | None = None
        self._partial = False  # loaded with only some of its parts: searchable, not changeable
        self._kind_built: str | None = None
        self._lookup: np.ndarray | None = None
        self._lookup_for: pl.DataFrame | None = None
        self._next_id = 0
        self.state: dict = {}  # small JSON-able state saved with the index (e.g. the embedder's scaler)

    # -- building -----------------------------------------------------------------------------
    def resolved_kind(self, n: int) -> str:
        return self.kind if self.kind != "auto" else ("flat" if n < EXACT_BELOW else "hnsw")

    def _new_index(self, kind: str, train: np.ndarray | None = None) -> faiss.Index:
        if kind == "flat":
            base = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = 80
            base.hnsw.efSearch = self.ef_search
        else:
            # FAISS wants ~39 training points per centroid, for the lists and for each PQ codebook.
            nlist = int(np.clip(np.sqrt(len(train)), 1, max(1, len(train) // 39)))
            if kind == "ivfsq":
                base = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(self.dim), self.dim, nlist,
                                                     faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            else:
                bits = int(np.clip(np.floor(np.log2(max(len(train), 1) / 39)), 1, 8))
                sub = next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if self.dim % m == 0)
                base = faiss.IndexIVFPQ(faiss.IndexFlatIP(self.dim), self.dim, nlist, sub, bits,
                                        faiss.METRIC_INNER_PRODUCT)
            base.train(train)
            # a fifth of the lists at least: at 2M vectors and 316 lists, 16 of them found 0.88 of the true
            # top 10 and 63 found 0.97 (bench/index.py --from-shards)
            self.nprobe = max(self.nprobe, nlist // 5)
            base.nprobe = self.nprobe
            base.set_direct_map_type(faiss.DirectMap.Hashtable)  # IVF keeps our ids: reconstruct/remove by id
            return base
        return faiss.IndexIDMap2(base)

    def __len__(self) -> int:
        return self.meta.height

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinite values")
        return vectors

    def add(self, spu_ids: list[str], vectors: np.ndarray, meta: pl.DataFrame | None = None) -> None:
        """Add SPUs; an spu_id already in the index is updated in place (keeps its id)."""
        self._check_whole()
        vectors = self._check(vectors)
        if len(spu_ids) != len(vectors):
            raise ValueError(f"{len(spu_ids)} spu_ids for {len(vectors)} vectors")
        if len(set(spu_ids)) != len(spu_ids):
            raise ValueError("duplicate spu_id in one add")
        existing = dict(zip(self.meta["spu_id"].to_list(), self.meta["id"].to_list()))
        updating = [s for s in spu_ids if s in existing]
        if updating:
            self.remove(updating, _keep_ids=True)
        ids = np.array([existing.get(s, -1) for s in spu_ids], dtype=np.int64)
        fresh = ids < 0
        ids[fresh] = np.arange(self._next_id, self._next_id + int(fresh.sum()))
        self._next_id += int(fresh.sum())

        if self._parts is not None:
            part = self._part_of(ids)
            for k in np.unique(part):
                self._parts[k].add_with_ids(vectors[part == k], ids[part == k])
            self._index.syncWithSubIndexes()
        elif self._index is None or self.resolved_kind(len(self) + len(ids)) != self._built_kind:
            self._rebuild(extra=(ids, vectors))
        else:
            self._index.add_with_ids(vectors, ids)
        rows = pl.DataFrame({"id": ids, "spu_id": spu_ids})
        if meta is not None:
            rows = rows.join(meta, on="spu_id", how="left", maintain_order="left")
        self.meta = pl.concat([self.meta, rows], how="diagonal_relaxed").sort("id")

    def remove(self, spu_ids: list[str], *, _keep_ids: bool = False) -> None:
        self._check_whole()
        known = set(self.meta["spu_id"].to_list())
        unknown = [s for s in spu_ids if s not in known]
        if unknown:
            raise UnknownSpuError(unknown)
        ids = self.meta.filter(pl.col("spu_id").is_in(spu_ids))["id"].to_numpy()
        if self._built_kind == "hnsw":  # HNSW cannot delete in place: rebuild from its stored vectors
            keep = self.meta.filter(~pl.col("spu_id").is_in(spu_ids))["id"].to_numpy()
            vectors = self.vectors(keep)
            self.meta = self.meta.filter(~pl.col("spu_id").is_in(spu_ids))
            self._index = None
            self._rebuild(extra=(keep, vectors), from_scratch=True)
        else:
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            # IVF's hashtable direct map removes only by an explicit id array.
            if self._parts is not None:
                part = self._part_of(ids)
                for k in np.unique(part):
                    mine = np.ascontiguousarray(ids[part == k])
                    self._parts[k].remove_ids(faiss.IDSelectorArray(len(mine), faiss.swig_ptr(mine)))
                self._index.syncWithSubIndexes()
            else:
                selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)) if self._built_kind in IVF_KINDS else ids
                self._index.remove_ids(selector)
            self.meta = self.meta.filter(~pl.col("spu_id").is_in(spu_ids))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._parts is not None:
            return np.stack([self._parts[k].reconstruct(int(i)) for k, i in zip(self._part_of(ids), ids)]).astype(np.float32)
        return np.stack([self._index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    @property
    def parts(self) -> int:
        """How many parts this index is searched in (1: a single FAISS index)."""
        return len(self._parts) if self._parts is not None else 1

    def _check_whole(self) -> None:
        if self._partial:  # an SPU of a part not loaded here would be taken for a new one
            raise ValueError("this SPU index was loaded with only some of its parts: load every part to add or "
                             "remove SPUs")

    def _part_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._part_starts, np.asarray(ids, dtype=np.int64), side="right") - 1

    def _join_parts(self, parts: list[faiss.Index], starts: list[int] | np.ndarray) -> None:
        # threaded: the parts are searched at once, one thread each, and their top k merged by score
        shards = faiss.IndexShards(self.dim, True, False)
        for part in parts:
            shards.add_shard(part)
        self._index, self._parts, self._part_starts = shards, list(parts), np.asarray(starts, dtype=np.int64)

    @property
    def _built_kind(self) -> str | None:
        return self._kind_built

    def _rebuild(self, extra: tuple[np.ndarray, np.ndarray], from_scratch: bool = False) -> None:
        old_ids = self.meta["id"].to_numpy() if (self._index is not None and not from_scratch) else np.zeros(0, np.int64)
        old = self.vectors(old_ids) if len(old_ids) else np.zeros((0, self.dim), dtype=np.float32)
        ids = np.concatenate([old_ids, extra[0]]).astype(np.int64)
        vectors = np.concatenate([old, extra[1]])
        kind = self.resolved_kind(len(ids))
        self._index = self._new_index(kind, train=vectors if kind in IVF_KINDS else None)
        self._kind_built = kind
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    @classmethod
    def from_shards(cls, shards: list[Path], fingerprint: str, kind: str = "ivfsq", *, column: str = "content",
                    sample: int = 100_000, seed: int = 0, parts: int = 1, log=None) -> "SpuIndex":
        """An index over vector shards (``embeddings.backfill``) without holding every vector at once: the
        coarse quantiser and PQ codebooks are trained on a sample drawn from every shard in proportion,
        then the shards are added one by one. ``kind`` flat or hnsw keeps full vectors (memory grows with
        the catalogue); ivfsq keeps a byte a dimension, ivfpq 64 bytes a vector. ``parts`` > 1 (IVF kinds
        only) splits the index into that many parts, each over a contiguous run of the shards."""
        import pyarrow.parquet as pq

        rows = [pq.ParquetFile(s).metadata.num_rows for s in shards]
        total = sum(rows)
        if total == 0:
            raise ValueError("the vector shards hold no vectors")
        rng = np.random.default_rng(seed)
        dtype = pl.read_parquet_schema(shards[0]).get(column)
        if not isinstance(dtype, pl.Array):
            raise ValueError(f"{shards[0]}: no fixed-size vector column '{column}'")
        index = cls(dtype.size, fingerprint, kind)
        resolved = index.resolved_kind(total)
        if parts < 1 or (parts > 1 and resolved not in IVF_KINDS):
            raise ValueError(f"parts: {parts}; an index in parts needs an IVF kind ({', '.join(IVF_KINDS)}), "
                             f"and at least one part")
        if parts > len(shards):
            raise ValueError(f"parts: {parts} parts of {len(shards)} vector shards; at most one part a shard")
        train = None
        if resolved in IVF_KINDS:
            drawn = []
            for shard, n in zip(shards, rows):
                take = min(n, int(np.ceil(sample * n / total)))
                if take:
                    vectors = _shard_vectors(shard, column)[1]
                    drawn.append(vectors[rng.choice(n, take, replace=False)])
            train = np.concatenate(drawn)
        trained = index._new_index(resolved, train=train)
        index._kind_built = resolved
        if parts == 1:
            index._index, members = trained, [trained]
        else:  # each part a copy of the one trained (empty) index: the same lists and codebooks
            blob = faiss.serialize_index(trained)
            members = [faiss.deserialize_index(blob) for _ in range(parts)]
        part_of_shard = np.repeat(np.arange(parts), [len(g) for g in np.array_split(np.arange(len(shards)), parts)])
        metas, seen, starts = [], 0, []
        for shard, part in zip(shards, part_of_shard):
            if len(starts) == part:
                starts.append(seen)
            spu_ids, vectors = _shard_vectors(shard, column)
            if not spu_ids:
                continue
            ids = np.arange(seen, seen + len(spu_ids), dtype=np.int64)
            members[part].add_with_ids(index._check(vectors), ids)
            metas.append(pl.DataFrame({"id": ids, "spu_id": spu_ids}))
            seen += len(spu_ids)
            if log:
                log(f"{shard.name}: {len(spu_ids)} vectors added ({seen}/{total})")
        index.meta = pl.concat(metas)
        if index.meta["spu_id"].n_unique() != index.meta.height:
            duplicated = index.meta.filter(pl.col("spu_id").is_duplicated())["spu_id"].unique().to_list()[:5]
            raise ValueError(f"spu_id in more than one shard (or twice in one): {duplicated}")
        index._next_id = seen
        if parts > 1:
            index._join_parts(members, starts)
            index._set_search_params()
        return index

    def recall_against_exact(self, shards: list[Path], queries: int = 200, k: int = 10, *, column: str = "content",
                             seed: int = 1) -> float:
        """Recall@k of this index against exact search over the shards, for ``queries`` of their own vectors
        (read one shard at a time: the exact answer never needs every vector at once)."""
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(len(self), min(queries, len(self)), replace=False))
        query = np.zeros((len(picked), self.dim), dtype=np.float32)
        best = np.full((len(picked), k), -np.inf, dtype=np.float32)
        best_ids = np.full((len(picked), k), -1, dtype=np.int64)
        offset = 0
        for shard in shards:  # first pass: the query vectors (ids are dense, in shard order)
            spu_ids, vectors = _shard_vectors(shard, column)
            if not spu_ids:
                continue
            inside = (picked >= offset) & (picked < offset + len(spu_ids))
            query[inside] = vectors[picked[inside] - offset]
            offset += len(spu_ids)
        offset = 0
        for shard in shards:
            spu_ids, vectors = _shard_vectors(shard, column)
            if not spu_ids:
                continue
            scores = query @ vectors.T
            ids = np.broadcast_to(np.arange(offset, offset + len(spu_ids)), scores.shape)
            merged, merged_ids = np.concatenate([best, scores], axis=1), np.concatenate([best_ids, ids], axis=1)
            top = np.argsort(-merged, axis=1)[:, :k]
            best, best_ids = np.take_along_axis(merged, top, 1), np.take_along_axis(merged_ids, top, 1)
            offset += len(spu_ids)
        _, found = self._index.search(query, k)
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), best_ids.tolist())]))

    # -- searching ----------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int = 10, exclude: list[str] | None = None) -> list[pl.DataFrame]:
        """Top-k per query: spu_id and score (cosine), best first; ``exclude`` drops those spu_ids."""
        vectors = self._check(np.atleast_2d(vectors))
        if not len(self):
            return [pl.DataFrame(schema={"spu_id": pl.String, "score": pl.Float32}) for _ in vectors]
        fetch = min(len(self), k + len(exclude or []))
        scores, ids = self._index.search(vectors, fetch)
        spu_of = self._spu_of()
        skip = set(exclude or [])
        results = []
        for row_scores, row_ids in zip(scores, ids):
            hits = [(spu_of[i], s) for i, s in zip(row_ids.tolist(), row_scores.tolist())
                    if i >= 0 and spu_of[i] is not None and spu_of[i] not in skip][:k]
            results.append(pl.DataFrame(hits, schema={"spu_id": pl.String, "score": pl.Float32}, orient="row"))
        return results

    def _spu_of(self) -> np.ndarray:
        """id -> spu_id as an array (ids are dense), rebuilt only after the index changed."""
        if self._lookup is None or self._lookup_for is not self.meta:
            lookup = np.full(self._next_id, None, dtype=object)
            lookup[self.meta["id"].to_numpy()] = self.meta["spu_id"].to_numpy()
            self._lookup, self._lookup_for = lookup, self.meta
        return self._lookup

    def search_arrays(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS answer (scores, int64 ids) for batch work and benchmarks."""
        return self._index.search(self._check(vectors), k)

    # -- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        generation = uuid.uuid4().hex[:12]
        index_file, meta_file = f"index-{generation}.faiss", f"meta-{generation}.parquet"
        part_files = [f"index-{generation}-p{k}.faiss" for k in range(self.parts)] if self._parts is not None else []
        if self._parts is not None:
            for name, part in zip(part_files, self._parts):
                faiss.write_index(part, str(folder / name))
        elif self._index is not None:
            faiss.write_index(self._index, str(folder / index_file))
        self.meta.write_parquet(folder / meta_file)
        single = self._index is not None and self._parts is None
        manifest = {"format": 2 if part_files else 1, "fingerprint": self.fingerprint, "dim": self.dim,
                    "kind": self.kind, "built_kind": self._built_kind, "count": len(self), "next_id": self._next_id,
                    "index_file": index_file if single else None, "meta_file": meta_file,
                    "hnsw_m": self.hnsw_m, "ef_search": self.ef_search, "nprobe": self.nprobe, "state": self.state}
        if part_files:
            manifest |= {"part_files": part_files, "part_starts": self._part_starts.tolist()}
        _atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1))
        written = {index_file, meta_file, *part_files}
        for stale in folder.glob("*-*.*"):
            if stale.name not in written and stale.suffix in (".faiss", ".parquet"):
                stale.unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, fingerprint: str | None = None, parts: list[int] | None = None) -> "SpuIndex":
        """``parts``: of an index in parts, load only these (a machine that holds a share of the catalogue);
        default all."""
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no SPU index at {folder} (manifest.json missing)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format", 1) > FORMAT_VERSION:
            raise ValueError(f"the SPU index at {folder} has format {manifest['format']}; this version reads up "
                             f"to {FORMAT_VERSION}: upgrade pledgeval or rebuild the index")
        if fingerprint is not None and manifest["fingerprint"] != fingerprint:
            raise IndexMismatchError(
                f"the SPU index at {folder} was built by encoder {manifest['fingerprint']}, but the encoder in use "
                f"is {fingerprint}; rebuild the index with this encoder (pledgeval index build)")
        index = cls(manifest["dim"], manifest["fingerprint"], manifest["kind"], hnsw_m=manifest["hnsw_m"],
                    ef_search=manifest["ef_search"], nprobe=manifest["nprobe"])
        index.meta = pl.read_parquet(folder / manifest["meta_file"])
        index._next_id = manifest["next_id"]
        index.state = manifest.get("state", {})
        part_files = manifest.get("part_files", [])
        if parts is not None and not part_files:
            raise ValueError(f"parts: the SPU index at {folder} is not in parts")
        if part_files:
            chosen = sorted(set(range(len(part_files)) if parts is None else parts))
            if not chosen or chosen[0] < 0 or chosen[-1] >= len(part_files):
                raise ValueError(f"parts: {parts}; the SPU index at {folder} has parts 0 to {len(part_files) - 1}")
            bounds = np.append(manifest["part_starts"], manifest["next_id"])
            index._join_parts([faiss.read_index(str(folder / part_files[k])) for k in chosen], bounds[chosen])
            if len(chosen) < len(part_files):  # each SPU's part, by the rule _part_of applies to the whole index
                part = np.searchsorted(manifest["part_starts"], index.meta["id"].to_numpy(), side="right") - 1
                index.meta, index._partial = index.meta.filter(pl.Series(np.isin(part, chosen))), True
            index._kind_built = manifest["built_kind"]
            index._set_search_params()
        elif manifest["index_file"]:
            index._index = faiss.read_index(str(folder / manifest["index_file"]))
            index._kind_built = manifest["built_kind"]
            index._set_search_params()
        return index

    def _set_search_params(self) -> None:
        """Search-time settings a saved FAISS index does not carry."""
        if self._kind_built == "hnsw":
            faiss.downcast_index(self._index.index).hnsw.efSearch = self.ef_search
        elif self._kind_built in IVF_KINDS:
            for member in self._parts if self._parts is not None else [self._index]:
                faiss.extract_index_ivf(member).nprobe = self.nprobe

    # An index inside a pickled model (the value heads' comparables): FAISS objects do not pickle, their
    # serialised bytes do.
    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_lookup": None, "_lookup_for": None}
        if self._parts is not None:
            state["_index"], state["_parts"] = None, [faiss.serialize_index(p) for p in self._parts]
        else:
            state["_index"] = faiss.serialize_index(self._index) if self._index is not None else None
        return state

    def __setstate__(self, state: dict) -> None:
        state = {"_parts": None, "_part_starts": None, "_partial": False, **state}  # pickled before indexes had parts
        self.__dict__.update(state)
        if self._parts is not None:
            self._join_parts([faiss.deserialize_index(p) for p in self._parts], self._part_starts)
            self._set_search_params()
        elif self._index is not None:
            self._index = faiss.deserialize_index(self._index)
            self._set_search_params()


def _shard_vectors(shard: Path, column: str) -> tuple[list[str], np.ndarray]:
    frame = pl.read_parquet(shard, columns=["spu_id", column])
    if frame.height == 0:
        return [], np.zeros((0, 0), dtype=np.float32)
    return frame["spu_id"].to_list(), np.ascontiguousarray(frame[column].to_numpy(), dtype=np.float32)


def _atomic_write_text(path: Path, text: str) -> None:
    write_atomic(path, text)
