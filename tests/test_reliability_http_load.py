"""The benchmark's Python load generator: loopback only, bounded, honest counts.

``tests/fixtures/http_load.py`` is what ``make bench`` falls back to when wrk is missing; it
must never send traffic off this machine, must stop by itself, and must not count a
wrong answer as throughput.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fixtures import http_load


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status = 200 if self.path == "/ok" else 404
        body = b'{"status": "ok"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep the test output clean


@pytest.fixture
def local_server() -> Iterator[str]:
    """A tiny keep-alive HTTP server on a free loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# Documentation-only addresses (RFC 5737): never routed, and refused before any connect.
@pytest.mark.parametrize(
    "url", ["http://192.0.2.1:8000/api/v1/health", "http://198.51.100.7/", "http://203.0.113.5/"]
)
def test_refuses_targets_off_this_machine(url: str) -> None:
    """A non-loopback address is refused before any connection is made."""
    with pytest.raises(ValueError, match="non-loopback"):
        http_load.run_python(url, duration=0.2, connections=1)


def test_counts_only_expected_answers_and_stops_on_time(local_server: str) -> None:
    """Successes are counted with latencies; other statuses are errors; the run is bounded."""
    started = time.monotonic()
    ok = http_load.run_python(local_server + "/ok", duration=0.5, connections=2)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0
    assert ok.requests > 0
    assert ok.errors == 0
    assert ok.statuses == {"200": ok.requests}
    assert ok.p50_ms is not None
    assert ok.p50_ms <= ok.p99_ms <= ok.max_ms

    bad = http_load.run_python(local_server + "/missing", duration=0.3, connections=2)
    assert bad.requests == 0
    assert bad.errors > 0
    assert set(bad.statuses) == {"404"}
    assert bad.p99_ms is None
    assert bad.rps == 0.0


def test_request_budget_bounds_the_run(local_server: str) -> None:
    """``max_requests`` caps the count even when the duration would allow more."""
    res = http_load.run_python(local_server + "/ok", duration=5.0, connections=2, max_requests=20)
    assert res.requests == 20
    assert res.duration_s < 5.0
