"""The bundle: one addon object that calls its parts' hooks in order."""

from __future__ import annotations

import pytest
from mitmproxy.test import taddons, tflow

from mitmflare.bundle import Bundle, make_addons


class Part:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def requestheaders(self, flow) -> None:
        self.calls.append(f"{self.name}.requestheaders")


class AsyncPart(Part):
    async def request(self, flow) -> None:
        self.calls.append(f"{self.name}.request")


class SyncPart(Part):
    def request(self, flow) -> None:
        self.calls.append(f"{self.name}.request")


async def test_parts_hooks_run_in_order_and_async_ones_are_awaited():
    calls: list[str] = []
    bundle = Bundle([SyncPart("a", calls), AsyncPart("b", calls), SyncPart("c", calls)])
    flow = tflow.tflow()
    bundle.requestheaders(flow)
    await bundle.request(flow)
    assert calls == ["a.requestheaders", "b.requestheaders", "c.requestheaders",
                     "a.request", "b.request", "c.request"]


async def test_a_method_patched_after_start_takes_effect():
    calls: list[str] = []
    part = SyncPart("a", calls)
    bundle = Bundle([part])
    part.request = lambda flow: calls.append("patched")
    await bundle.request(tflow.tflow())
    assert calls == ["patched"]


def test_a_hook_the_bundle_does_not_forward_is_refused_at_start():
    class Connects:
        def client_connected(self, client) -> None: ...

    with pytest.raises(TypeError, match=r"Connects\.client_connected"):
        Bundle([Connects()])


def test_an_async_hook_called_synchronously_is_refused_at_start():
    class AsyncHeaders:
        async def responseheaders(self, flow) -> None: ...

    with pytest.raises(TypeError, match=r"AsyncHeaders\.responseheaders must not be async"):
        Bundle([AsyncHeaders()])


def test_the_parts_options_and_commands_are_registered():
    with taddons.context(Bundle(make_addons())) as tctx:
        assert "flare_accounts" in tctx.options and "flare_strategy" in tctx.options
        assert {"flare.accounts", "flare.why", "flare.replay", "flare.resume"} \
            <= set(tctx.master.commands.commands)


def test_background_tasks_keep_a_reference():
    """Every task the addons start goes through mitmproxy's asyncio_utils.create_task with
    keep_ref (a task nothing refers to can be garbage-collected mid-run), as mitmproxy's own
    addons do; TaskGroup children are held by their group."""
    import re

    from conftest import ROOT
    plain = [f"{path.name}:{n}" for path in (ROOT / "addons" / "mitmflare").rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"(?<!asyncio_utils)(?<!group)\.create_task\(", line)]
    assert plain == []
