"""Admission before parsing: a request body is read only under a permit from a byte budget.

Without it, every authenticated upload is read, parsed and validated before any limit counts it (the
job limiter's 429 comes after the body is in memory), so N concurrent maximal bodies cost N times
their size and more. Here a request that has a body first claims its size (`Content-Length`, or the
largest body allowed when it is chunked) from a budget of bytes for the whole server and a share of
it per tenant. When the claim does not fit it waits, at most `wait_s`, for others to give theirs
back, then is answered 429 with Retry-After, its body unread. A claim larger than a budget is cut to
the budget, so one body of the largest allowed size always gets through alone.

The permit is held until the response starts (or the request ends without one): the raw body, its
parsed form and a non-streamed job's input live that long, so that is the memory the budget bounds.
A streamed answer gives its permit back when its first bytes go out.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fish_worker.errors import ErrorKind
from fish_worker.server.auth import tenant_of_scope
from fish_worker.server.errors import error_response, status_of


class BodyBudget:
    """Bytes of request bodies in flight: at most `total_bytes`, and `per_tenant_bytes` per tenant."""

    def __init__(self, total_bytes: int, per_tenant_bytes: int, wait_s: float, retry_after_s: int) -> None:
        self.total_bytes = total_bytes
        self.per_tenant_bytes = min(per_tenant_bytes, total_bytes)
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.in_use = 0
        self._per_tenant: Counter[str | None] = Counter()
        self._waiters: set[asyncio.Future] = set()

    def claim_of(self, size: int) -> int:
        return min(size, self.per_tenant_bytes)

    def _fits(self, tenant: str | None, claim: int) -> bool:
        return self.in_use + claim <= self.total_bytes and self._per_tenant[tenant] + claim <= self.per_tenant_bytes

    async def acquire(self, tenant: str | None, size: int) -> int | None:
        """Claim `size` bytes (cut to the tenant's share) for `tenant`, waiting up to `wait_s`: the
        bytes claimed, or None when they did not fit in time. Whichever waiting claim fits when bytes
        come back goes first: a small body does not wait behind a large one."""
        claim = self.claim_of(size)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while not self._fits(tenant, claim):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            changed = loop.create_future()
            self._waiters.add(changed)
            try:
                await asyncio.wait_for(changed, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                self._waiters.discard(changed)
        self.in_use += claim
        self._per_tenant[tenant] += claim
        return claim

    def release(self, tenant: str | None, claim: int) -> None:
        """Give `claim` bytes back (synchronous: safe in a cancelled request's cleanup) and wake the waiters."""
        self.in_use -= claim
        self._per_tenant[tenant] -= claim
        if self._per_tenant[tenant] <= 0:
            del self._per_tenant[tenant]
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def busy_message(self, tenant: str | None, size: int) -> str:
        claim = self.claim_of(size)
        if self._per_tenant[tenant] + claim > self.per_tenant_bytes:
            what = (
                f"too many request bodies of yours in flight: {self._per_tenant[tenant]} of your "
                f"{self.per_tenant_bytes} bytes (FISH_BODY_BUDGET_PER_TENANT_BYTES)"
            )
        else:
            what = (
                f"server busy: request bodies in flight use {self.in_use} of its "
                f"{self.total_bytes} bytes (FISH_BODY_BUDGET_BYTES)"
            )
        return f"{what}; this body needs {claim}; retry in {self.retry_after_s} s"


def declared_body_size(scope: Scope, max_body_bytes: int) -> int | None:
    """The bytes a request's body may take: its Content-Length, or `max_body_bytes` when it is sent
    chunked; 0 without a body; None when the length is unusable or over the limit (the body limits
    answer those at once, without reading)."""
    headers = dict(scope["headers"])
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            return None
        return length if 0 <= length <= max_body_bytes else None
    return max_body_bytes if b"transfer-encoding" in headers else 0


class BodyAdmissionMiddleware:
    """Inside authentication (the tenant is known, unauthenticated bodies were refused unread) and
    outside the body limits (whose deadline starts once the permit is held)."""

    def __init__(self, app: ASGIApp, budget: BodyBudget, max_body_bytes: int) -> None:
        self.app = app
        self.budget = budget
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = declared_body_size(scope, self.max_body_bytes) if scope["type"] == "http" else 0
        if not size:  # no body (or one the body limits refuse unread)
            await self.app(scope, receive, send)
            return
        tenant = tenant_of_scope(scope)
        claim = await self.budget.acquire(tenant, size)
        if claim is None:
            retry = str(self.budget.retry_after_s)
            response = error_response(
                scope["path"],
                status_of(ErrorKind.BUSY),
                self.budget.busy_message(tenant, size),
                headers={"Retry-After": retry, "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        held = True

        def give_back() -> None:
            nonlocal held
            if held:
                held = False
                self.budget.release(tenant, claim)

        async def send_then_give_back(message: Message) -> None:
            if message["type"] == "http.response.start":
                give_back()  # the body has been read and used: a streamed answer runs on without it
            await send(message)

        try:
            await self.app(scope, receive, send_then_give_back)
        finally:
            give_back()
