"""Test-only addon script loaded after the bundle: injects faults into the running router.

* ``x-test-fault: inspect``: reading the request body raises (an exception inside the router).
* ``x-test-fault: skip-router``: the router's ``request`` hook raises before doing anything
  (as if its own safety net failed), so only the fail-closed guard stands between the client
  and the upstream.
"""

from mitmflare.addons import router
from mitmflare.addons.router import Router

_inspect = router.inspect_request
_request = Router.request


def _faulty_inspect(provider, request):
    if request.headers.get("x-test-fault") == "inspect":
        raise RuntimeError("injected fault while reading the body")
    return _inspect(provider, request)


async def _faulty_request(self, flow):
    if flow.request.headers.get("x-test-fault") == "skip-router":
        raise RuntimeError("injected fault before routing")
    await _request(self, flow)


router.inspect_request = _faulty_inspect
Router.request = _faulty_request
