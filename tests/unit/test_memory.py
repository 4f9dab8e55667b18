"""Memory is given back after large requests (a full collection and malloc_trim), never
after small ones."""

from __future__ import annotations

import asyncio
import gc
import weakref

from mitmproxy.test import tflow, tutils

from mitmflare.addons import memory
from mitmflare.addons.memory import LARGE_BYTES, MemoryReturn


def _flow(size: int):
    return tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/messages",
                                       content=b"x" * size), resp=True)


async def test_a_large_request_frees_its_cyclic_garbage_soon_after_it_ended(monkeypatch):
    monkeypatch.setattr(memory, "DELAY_S", 0.01)
    monkeypatch.setattr(memory, "COLLECT_AFTER_S", 60)  # the run's own collection frees it
    part = MemoryReturn()

    class Cycle:  # what a finished flow is: garbage that only a collection frees
        pass

    garbage = Cycle()
    garbage.me = garbage
    gone = weakref.ref(garbage)
    del garbage
    gc.disable()  # no automatic collection may free it first
    try:
        part.response(_flow(LARGE_BYTES))
        part.error(_flow(LARGE_BYTES))  # one run pending at a time
        await asyncio.sleep(0.2)
    finally:
        gc.enable()
    assert part.runs == 1 and gone() is None
    part.done()


async def test_small_requests_schedule_nothing(monkeypatch):
    monkeypatch.setattr(memory, "DELAY_S", 0.01)
    monkeypatch.setattr(memory, "COLLECT_AFTER_S", 0.01)
    part = MemoryReturn()
    part.response(_flow(LARGE_BYTES - 1))
    part.error(_flow(10))
    await asyncio.sleep(0.05)
    assert part.runs == 0 and part._pending is None
    assert part.collections == 0 and part._collect is None


async def test_a_pending_run_and_collection_are_cancelled_at_shutdown():
    part = MemoryReturn()
    part.response(_flow(LARGE_BYTES))
    assert part._pending is not None and part._collect is not None
    part.done()
    assert part._pending is None and part.runs == 0
    assert part._collect is None and part.collections == 0


async def test_not_while_a_large_request_is_in_flight_nor_between_requests_of_a_burst(
        monkeypatch):
    monkeypatch.setattr(memory, "DELAY_S", 0.2)
    monkeypatch.setattr(memory, "COLLECT_AFTER_S", 60)  # (its collection is timed below)
    part = MemoryReturn()
    first, second = _flow(LARGE_BYTES), _flow(LARGE_BYTES)
    part.request(first)
    part.request(second)
    part.response(first)  # the second is still in flight
    await asyncio.sleep(0.3)
    assert part.runs == 0 and part._pending is None
    for _ in range(3):  # a burst: each ends within DELAY_S of the next starting
        part.response(second)
        await asyncio.sleep(0.03)
        second = _flow(LARGE_BYTES)
        part.request(second)
    assert part.runs == 0
    part.response(second)
    await asyncio.sleep(0.4)  # quiet for DELAY_S after the last
    assert part.runs == 1
    part.done()


async def test_a_large_request_is_followed_soon_by_one_collection_that_frees_it(monkeypatch):
    monkeypatch.setattr(memory, "COLLECT_AFTER_S", 0.01)
    part = MemoryReturn()

    class Cycle:
        pass

    garbage = Cycle()
    garbage.me = garbage
    gone = weakref.ref(garbage)
    del garbage
    gc.disable()
    try:
        part.response(_flow(LARGE_BYTES))
        part.response(_flow(LARGE_BYTES))  # one collection pending at a time
        assert part.collections == 0 and gone() is not None
        await asyncio.sleep(0.1)
    finally:
        gc.enable()
    assert part.collections == 1 and gone() is None
    assert part.runs == 0  # giving memory back to the system waits for DELAY_S of quiet
    part.done()


def test_start_up_objects_leave_the_collectors_sight_until_unloaded():
    part = MemoryReturn()
    assert gc.get_freeze_count() == 0

    class Cycle:  # garbage of the start-up: collected first, not frozen for good
        pass

    garbage = Cycle()
    garbage.me = garbage
    gone = weakref.ref(garbage)
    del garbage
    try:
        part.running()
        assert gc.get_freeze_count() > 1000  # this test process's modules, pytest, ...
        assert gone() is None
    finally:
        part.done()
    assert gc.get_freeze_count() == 0


def test_the_heap_is_kept_only_where_glibc_can_be_told(monkeypatch):
    assert memory.keep_heap() is True  # this machine: glibc
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.keep_heap() is False  # musl, macOS: nothing set, nothing raised
    part = MemoryReturn()
    part.running()
    part.done()


async def test_under_mitmweb_no_collection_follows_each_large_request(monkeypatch):
    from mitmproxy.addons.view import View
    from mitmproxy.test import taddons

    monkeypatch.setattr(memory, "COLLECT_AFTER_S", 0.01)
    for extra, collects in (([View()], False), ([], True)):  # mitmweb, mitmdump
        part = MemoryReturn()
        with taddons.context(part, *extra):
            part.running()
            try:
                assert part.collect_each is collects
                part.response(_flow(LARGE_BYTES))
                await asyncio.sleep(0.05)
                assert part.collections == (1 if collects else 0)
            finally:
                part.done()
