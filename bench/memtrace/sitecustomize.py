"""Python-allocation tracing for the soaked server (``bench/soak.py --tracemalloc MINUTES``).

The soak puts this folder first on the server's PYTHONPATH, so every Python process of the served tree
imports it at start-up. With ``PLEDGEVAL_MEMTRACE_DIR`` set, it starts ``tracemalloc`` (frames per trace:
``PLEDGEVAL_MEMTRACE_FRAMES``, default 8) once ``PLEDGEVAL_MEMTRACE_EVERY`` seconds have passed (tracing
the imports makes start-up take many minutes: transformers alone parses its whole package), and from then
on, every ``PLEDGEVAL_MEMTRACE_EVERY`` seconds, dumps a snapshot to ``<dir>/<pid>-<n>.snap`` and appends ``{"n", "wall", "traced_mb", "rss_mb"}`` to ``<dir>/<pid>.jsonl``.
Without the variable it does nothing. Tracing slows allocation and a snapshot pauses the process for a
second or more: figures of a traced soak are for finding where memory goes, not for its latency or RSS.
"""

import os

if os.environ.get("PLEDGEVAL_MEMTRACE_DIR"):
    import json
    import threading
    import time
    import tracemalloc

    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _dump_every(folder: str, every_s: float, frames: int) -> None:
        pid, n = os.getpid(), 0
        time.sleep(every_s)
        tracemalloc.start(frames)  # growth between two later snapshots is what is compared
        t0 = time.monotonic()
        while True:
            time.sleep(max(0.0, t0 + (n + 1) * every_s - time.monotonic()))
            n += 1
            snapshot = tracemalloc.take_snapshot()
            path = os.path.join(folder, f"{pid}-{n:03d}.snap")
            snapshot.dump(path + ".tmp")
            os.replace(path + ".tmp", path)  # a reader never sees half a snapshot
            del snapshot
            traced, _ = tracemalloc.get_traced_memory()
            with open(os.path.join(folder, f"{pid}.jsonl"), "a") as log:
                log.write(json.dumps({"n": n, "wall": time.time(),
                                      "traced_mb": round(traced / 2**20, 2), "rss_mb": round(_rss_mb(), 1)}) + "\n")

    threading.Thread(target=_dump_every, args=(os.environ["PLEDGEVAL_MEMTRACE_DIR"],
                                               float(os.environ.get("PLEDGEVAL_MEMTRACE_EVERY", "300")),
                                               int(os.environ.get("PLEDGEVAL_MEMTRACE_FRAMES", "8"))),
                     name="memtrace", daemon=True).start()
