"""How a worker process's C heap (glibc malloc) gives memory back: the two settings the service makes.

- ``release_freed_heap()``: glibc's ``malloc_trim(0)``, called after each encoder call (serving.batching).
- ``limit_arenas(n)``: at most ``n`` malloc arenas in this process. glibc gives threads their own arenas,
  up to 8 per core, and each keeps the freed pages it cannot hand back; the service's request threads
  (anyio's pool) and BentoML's own threads touch several. ``PLEDGEVAL_MALLOC_ARENAS`` (default 2; 0 keeps
  glibc's choice) sets it for the service. An operator's ``MALLOC_ARENA_MAX`` wins: glibc has read it
  already. bench/soak.py measures what it does to a worker's memory.

Both are no-ops where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Callable

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
DEFAULT_ARENAS = 2


def _libc_function(name: str, argtypes: list, restype) -> Callable | None:
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


_trim = _libc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
_mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)


def release_freed_heap() -> int | None:
    """Hand the pages glibc holds free back to the system; 1 if any went back, None without glibc."""
    return _trim(0) if _trim is not None else None


def arenas_setting() -> int:
    """``PLEDGEVAL_MALLOC_ARENAS`` as a number of arenas (0: glibc's default)."""
    raw = os.environ.get("PLEDGEVAL_MALLOC_ARENAS", str(DEFAULT_ARENAS)).strip()
    if not raw.isdigit():
        raise ValueError(f"PLEDGEVAL_MALLOC_ARENAS: must be a whole number >= 0 (0 keeps glibc's default), got {raw!r}")
    return int(raw)


def limit_arenas(count: int) -> bool:
    """No new malloc arena once the process has ``count``: later threads share them. Arenas made before
    stay (the service's imports leave two or three), and it must come before the process has made 8
    (glibc fixes its own limit then): call it at import, before requests start threads. False when not
    applied: count 0, MALLOC_ARENA_MAX set in the environment, or no glibc."""
    if count <= 0 or "MALLOC_ARENA_MAX" in os.environ or _mallopt is None:
        return False
    return _mallopt(M_ARENA_MAX, count) == 1
