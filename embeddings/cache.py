"""On-disk cache of vectors keyed by content hash + encoder fingerprint: unchanged inputs are never
re-embedded, and a new encoder never reads an old encoder's vectors."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def content_key(item) -> str:
    if isinstance(item, (bytes, bytearray)):
        data = bytes(item)
    elif isinstance(item, Path) or (isinstance(item, str) and item.startswith("file:")):
        data = Path(str(item).removeprefix("file:")).read_bytes()
    else:
        data = str(item).encode()
    return hashlib.sha256(data).hexdigest()


class VectorCache:
    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("create table if not exists vectors (fingerprint text, kind text, key text, "
                         "vector blob, primary key (fingerprint, kind, key))")

    def get_or_compute(self, kind: str, keys: Sequence[str], items: Sequence,
                       compute: Callable[[list], np.ndarray]) -> np.ndarray:
        """Vectors for ``items``; only the ones whose key is not cached yet are computed (and stored)."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 900):  # SQLite's bound-parameter limit
            chunk = unique[start:start + 900]
            rows = self._db.execute(
                f"select key, vector from vectors where fingerprint=? and kind=? and key in ({','.join('?' * len(chunk))})",
                [self.fingerprint, kind, *chunk]).fetchall()
            found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        missing = [i for i, k in enumerate(keys) if k not in found]
        first_missing = list({keys[i]: i for i in reversed(missing)}.values())
        if first_missing:
            computed = compute([items[i] for i in first_missing]).astype(np.float32)
            with self._db:
                self._db.executemany("insert or replace into vectors values (?, ?, ?, ?)",
                                     [(self.fingerprint, kind, keys[i], v.tobytes())
                                      for i, v in zip(first_missing, computed)])
            found.update((keys[i], v) for i, v in zip(first_missing, computed))
        self.last_misses = len(first_missing)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys])

    def close(self) -> None:
        self._db.close()
