"""Helpers shared by the benchmarks: where the shared data is, and a plain table printer."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared(name: str) -> Path:
    base = Path(os.environ.get("PLEDGEVAL_SHARED_DATA", ROOT.parent / "shared" / "data"))
    path = base / name
    if not path.exists():
        raise SystemExit(f"shared data not found: {path} (set PLEDGEVAL_SHARED_DATA)")
    return path


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(line)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
