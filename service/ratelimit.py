"""A limit on failed authentication: 429 after too many failures from one address.

A request *carries credentials* when it has an ``Authorization`` header or
posts the login form. When such a request fails with 401 (unknown, revoked or
expired token, a refused CDS JWT, a wrong pasted token), the client address
(``request.remote_addr``: the proxy's client once ``FORECAST_PROXY_FIX`` is
set) records a failure. After ``FORECAST_AUTH_FAILURES_PER_MINUTE`` failures
in 60 seconds, requests with credentials from that address get 429 with
``Retry-After`` until the oldest failure leaves the window, whatever the
token: guessing tokens costs a minute per few dozen tries.

The counts live in the worker's memory (each gunicorn worker counts its
own), which bounds guessing per worker; a limit across workers and hosts
belongs in the reverse proxy (docs/security.md).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from flask import Flask, Response, request

from service.errors import ApiProblem

WINDOW_SECONDS = 60.0
#: Addresses tracked at most (the oldest are forgotten first).
MAX_ADDRESSES = 10_000


class FailureLimiter:
    """Failures per key in a sliding window (thread-safe, bounded memory)."""

    def __init__(self, limit: int, window: float = WINDOW_SECONDS) -> None:
        self.limit = int(limit)
        self.window = float(window)
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str, now: float | None = None) -> int:
        """Seconds until ``key`` may try again (0: not blocked)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent(key, now)
            if times is None or len(times) < self.limit:
                return 0
            return max(1, int(times[0] + self.window - now + 0.999))

    def record(self, key: str, now: float | None = None) -> None:
        """Count one failure of ``key``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent(key, now)
            if times is None:
                if len(self._failures) >= MAX_ADDRESSES:
                    self._failures.pop(next(iter(self._failures)))
                times = self._failures[key] = deque()
            times.append(now)
            while len(times) > self.limit:
                times.popleft()


def _carries_credentials() -> bool:
    return bool(request.headers.get("Authorization")) or (
        request.method == "POST" and request.endpoint == "pages.login"
    )


def init_app(app: Flask) -> None:
    """Count failed authentications and refuse (429) an address over the limit."""
    limiter = FailureLimiter(int(app.config.get("KAP_AUTH_FAILURES_PER_MINUTE") or 20))
    app.extensions["kap_auth_limiter"] = limiter

    def refuse_if_limited() -> None:
        if not _carries_credentials():
            return
        wait = limiter.retry_after(request.remote_addr or "-")
        if wait:
            raise ApiProblem(
                429,
                "Too many failed authentications",
                "Too many requests from this address failed authentication; retry later.",
                headers={"Retry-After": str(wait)},
            )

    def count_failure(resp: Response) -> Response:
        if resp.status_code == 401 and _carries_credentials():
            limiter.record(request.remote_addr or "-")
        return resp

    app.before_request(refuse_if_limited)
    app.after_request(count_failure)
