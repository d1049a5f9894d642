"""Helpers shared by the benchmarks: where the shared data is, a plain table printer, a free port, a
working folder that goes when the run went well, and a `bentoml serve` of the project run as a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
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


def finish_work_folder(work: Path, keep: bool) -> None:
    """Remove a run's working folder (its store and server logs, 30 to 150 MB) unless ``keep``: a bench keeps
    it where the run went wrong, and a run that raised never gets here, so the logs stay to be read."""
    if keep:
        print(f"working folder kept: {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BentoServer:
    """``bentoml serve TARGET`` from the project root on ``port``, in its own process group (so that its
    workers stop with it), its output in ``log_path``."""

    def __init__(self, target: str, port: int, env: dict, log_path: Path) -> None:
        self.port, self.log_path = port, Path(log_path)
        self.base = f"http://127.0.0.1:{port}"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", target, "--port", str(port)],
                                     cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float) -> float:
        """Seconds until GET /readyz answered 200; RuntimeError with the log's tail if it never does."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise RuntimeError(f"GET /readyz not 200 after {timeout:.0f}s\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        # workers that outlived the serve process (same group)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
