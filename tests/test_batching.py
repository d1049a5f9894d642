import asyncio
import platform
import threading

import pytest

from serving.batching import PriceBatcher


def test_concurrent_requests_share_a_call_and_each_gets_its_own_answers():
    calls, release = [], threading.Event()

    def price(items):
        calls.append([i["spu_id"] for i in items])
        release.wait(5)  # the first call is still running while the next requests arrive
        return [{"spu_id": i["spu_id"], "error": None if i["spu_id"] != "bad" else "spu_id: unknown"} for i in items]

    async def run():
        batcher = PriceBatcher(price, max_items=4)
        first = asyncio.ensure_future(batcher([{"spu_id": "a"}]))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher([{"spu_id": s} for s in group]))
                for group in (["b", "bad"], ["c"], ["d", "e"], ["f"])]
        await asyncio.sleep(0.05)
        release.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(run())
    assert [a["spu_id"] for a in first] == ["a"]
    assert [[a["spu_id"] for a in answers] for answers in rest] == [["b", "bad"], ["c"], ["d", "e"], ["f"]]
    assert rest[0][1]["error"] == "spu_id: unknown" and rest[1][0]["error"] is None
    # one call alone, then the waiting requests together up to max_items, then the rest
    assert calls == [["a"], ["b", "bad", "c"], ["d", "e", "f"]]


def test_a_failed_call_fails_its_requests_and_the_batcher_goes_on():
    def price(items):
        if any(i["spu_id"] == "boom" for i in items):
            raise RuntimeError("encoder failed")
        return [{"spu_id": i["spu_id"]} for i in items]

    async def run():
        batcher = PriceBatcher(price)
        with pytest.raises(RuntimeError, match="encoder failed"):
            await batcher([{"spu_id": "boom"}])
        return await batcher([{"spu_id": "ok"}])

    assert asyncio.run(run()) == [{"spu_id": "ok"}]


def test_every_call_hands_the_freed_heap_back_even_when_it_fails(monkeypatch):
    import serving.batching as batching

    released = []
    monkeypatch.setattr(batching, "release_freed_heap", lambda: released.append(True))

    def price(items):
        if items[0]["spu_id"] == "boom":
            raise RuntimeError("encoder failed")
        return [{"spu_id": i["spu_id"]} for i in items]

    async def run():
        batcher = PriceBatcher(price)
        await batcher([{"spu_id": "a"}])
        with pytest.raises(RuntimeError):
            await batcher([{"spu_id": "boom"}])

    asyncio.run(run())
    assert len(released) == 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_heap_release_is_glibc_malloc_trim_here():
    from serving.batching import release_freed_heap

    assert release_freed_heap() in (0, 1)  # the no-op stand-in answers None
