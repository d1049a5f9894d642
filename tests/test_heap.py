import platform
import subprocess
import sys
import textwrap

import pytest

from serving.heap import arenas_setting, limit_arenas

ARENAS_AFTER_THREADS = textwrap.dedent("""
    import ctypes, os, re, sys, tempfile, threading
    from serving.heap import limit_arenas
    limit_arenas(int(sys.argv[1]))
    barrier = threading.Barrier(12)
    def work():  # each thread allocates while all the others are alive, as request threads do
        kept = [ctypes.create_string_buffer(2000) for _ in range(500)]
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    libc = ctypes.CDLL("libc.so.6")
    libc.fdopen.restype = ctypes.c_void_p
    with tempfile.TemporaryFile() as f:
        stream = libc.fdopen(os.dup(f.fileno()), b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        f.seek(0)
        print(len(re.findall(r'<heap nr="[0-9]+">', f.read().decode())))
""")


def _arenas_after_threads(limit: int) -> int:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}  # no MALLOC_ARENA_MAX from the caller
    out = subprocess.run([sys.executable, "-c", ARENAS_AFTER_THREADS, str(limit)], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
def test_twelve_threads_share_the_arenas_the_service_allows():
    assert _arenas_after_threads(2) <= 3  # the main arena, and at most one more made before the limit
    assert _arenas_after_threads(0) > 3   # glibc's own choice: about one arena per thread


def test_the_arena_setting_is_read_from_the_environment_and_checked(monkeypatch):
    monkeypatch.delenv("PLEDGEVAL_MALLOC_ARENAS", raising=False)
    assert arenas_setting() == 2
    monkeypatch.setenv("PLEDGEVAL_MALLOC_ARENAS", "0")
    assert arenas_setting() == 0 and limit_arenas(0) is False
    monkeypatch.setenv("PLEDGEVAL_MALLOC_ARENAS", "two")
    with pytest.raises(ValueError, match="PLEDGEVAL_MALLOC_ARENAS"):
        arenas_setting()


def test_an_operators_malloc_arena_max_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas(2) is False
