"""A bounded HTTP load generator for the benchmark: wrk when installed, else Python threads.

Both drivers send one request shape (method, path, headers, body) over N keep-alive
connections for a fixed duration and report requests per second and latency
percentiles in the same form, so ``bench/run.py`` can use either.

Safety: the target must be a loopback address (the benchmark only ever runs its own
server on this machine), every run is bounded in time and in request count, and the
driver stops by itself.

Usage (stand-alone)::

    python bench/http_load.py http://127.0.0.1:8000/api/v1/health -c 16 -d 10
    python bench/http_load.py http://127.0.0.1:8000/api/v1/forecast -m POST \\
        --body-file body.json -H "Authorization: Bearer $TOKEN" --driver python
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

#: Hard ceiling on requests per run, whatever the duration: a runaway loop stops here.
MAX_REQUESTS = 2_000_000
#: Hard ceiling on a run's duration in seconds.
MAX_DURATION_S = 120.0


@dataclass
class LoadResult:
    """What one load run measured.

    Latencies are per request in milliseconds, measured from sending the request to
    reading the whole response. ``errors`` counts transport failures and responses
    whose status was not the expected one (they are not in the latency figures).
    """

    driver: str
    method: str
    path: str
    connections: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    statuses: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Return a JSON-serialisable dict."""
        return asdict(self)


def check_loopback(url: str) -> tuple[str, int, str]:
    """Split ``url`` into host, port and path, refusing anything but a loopback host.

    The benchmark's traffic must never leave this machine.

    Raises
    ------
    ValueError
        If the URL is not plain http or its host does not resolve to loopback only.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://<loopback>:<port>/... URLs are allowed, got {url!r}")
    infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise ValueError(f"refusing non-loopback target {parts.hostname!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


def _percentiles(latencies_ms: list[float]) -> dict[str, float | None]:
    if not latencies_ms:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(latencies_ms, dtype=float)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(arr.max()), 3),
    }


class _Worker(threading.Thread):
    """One keep-alive connection sending requests back to back until the deadline."""

    def __init__(
        self,
        host: str,
        port: int,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
        expect_status: int,
        deadline: float,
        budget: int,
    ) -> None:
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.expect_status = expect_status
        self.deadline = deadline
        self.budget = budget
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.statuses: dict[str, int] = {}

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        conn.connect()
        # Small requests and responses: do not let Nagle's algorithm add 40 ms stalls.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        sent = 0
        while sent < self.budget and time.perf_counter() < self.deadline:
            sent += 1
            try:
                if conn is None:
                    conn = self._connect()
                start = time.perf_counter()
                conn.request(self.method, self.path, body=self.body, headers=self.headers)
                resp = conn.getresponse()
                resp.read()
                elapsed = (time.perf_counter() - start) * 1000.0
                key = str(resp.status)
                self.statuses[key] = self.statuses.get(key, 0) + 1
                if resp.status == self.expect_status:
                    self.latencies_ms.append(elapsed)
                else:
                    self.errors += 1
                if resp.will_close:
                    # The server closes after each response (e.g. a sync worker): reconnect,
                    # and count the reconnect in the next request's latency like wrk does.
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                self.errors += 1
                self.statuses["transport_error"] = self.statuses.get("transport_error", 0) + 1
                if conn is not None:
                    conn.close()
                conn = None
                # Back off a little so a dead server does not turn this into a busy loop.
                time.sleep(0.01)
        if conn is not None:
            conn.close()


def run_python(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    connections: int = 16,
    duration: float = 10.0,
    expect_status: int = 200,
    max_requests: int = MAX_REQUESTS,
) -> LoadResult:
    """Load ``url`` with ``connections`` threads, each one keep-alive connection.

    The Python driver shares the machine's cores with the server under test, so on a
    small machine it understates the server's throughput; prefer :func:`run_wrk`.
    """
    host, port, path = check_loopback(url)
    duration = min(float(duration), MAX_DURATION_S)
    headers = dict(headers or {})
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    per_worker = max(1, min(max_requests, MAX_REQUESTS) // connections)
    start = time.perf_counter()
    deadline = start + duration
    workers = [
        _Worker(host, port, method, path, headers, body, expect_status, deadline, per_worker)
        for _ in range(connections)
    ]
    for w in workers:
        w.start()
    for w in workers:
        # A request can outlive the deadline by at most the socket timeout.
        w.join(timeout=duration + 15)
    elapsed = time.perf_counter() - start
    latencies = [x for w in workers for x in w.latencies_ms]
    statuses: dict[str, int] = {}
    for w in workers:
        for k, v in w.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    return LoadResult(
        driver="python",
        method=method,
        path=path,
        connections=connections,
        duration_s=round(elapsed, 3),
        requests=len(latencies),
        errors=sum(w.errors for w in workers),
        rps=round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        statuses=statuses,
        **_percentiles(latencies),
    )


_WRK_SCRIPT = r"""
-- Written by bench/http_load.py: one request shape, JSON summary on stdout.
local f = io.open(os.getenv("KAP_BENCH_REQUEST"), "r")
local spec = f:read("*a")
f:close()
local method, body, headers = nil, nil, {}
for line in spec:gmatch("[^\n]+") do
  local k, v = line:match("^([^\t]+)\t(.*)$")
  if k == "METHOD" then method = v
  elseif k == "BODYFILE" then
    local bf = io.open(v, "rb"); body = bf:read("*a"); bf:close()
  elseif k then headers[k] = v end
end
local expect = tonumber(os.getenv("KAP_BENCH_EXPECT") or "200")
local seen = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  req = wrk.format(method, nil, headers, body)
end

function request()
  return req
end

function response(status, hdrs, resp_body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do all[k] = (all[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(all) do table.insert(parts, string.format('"%s": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'KAP_WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %.1f, "p90_us": %.1f, ' ..
    '"p99_us": %.1f, "max_us": %.1f, "statuses": {%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, table.concat(parts, ", ")))
end
"""


def wrk_available() -> bool:
    """Say whether the ``wrk`` binary is on PATH."""
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    connections: int = 16,
    duration: float = 10.0,
    expect_status: int = 200,
    threads: int = 2,
) -> LoadResult:
    """Load ``url`` with wrk (C, event loop): ``threads`` threads, ``connections`` connections.

    wrk counts non-2xx/3xx answers as errors but keeps them in its latency histogram; the
    per-status counts come from the Lua script so the caller can tell what happened.
    """
    _, _, path = check_loopback(url)
    duration = min(float(duration), MAX_DURATION_S)
    headers = dict(headers or {})
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    with tempfile.TemporaryDirectory(prefix="kap-wrk-") as tmp:
        tmpdir = Path(tmp)
        lines = [f"METHOD\t{method}"]
        if body is not None:
            (tmpdir / "body").write_bytes(body)
            lines.append(f"BODYFILE\t{tmpdir / 'body'}")
        lines += [f"{k}\t{v}" for k, v in headers.items()]
        (tmpdir / "request.tsv").write_text("\n".join(lines) + "\n")
        (tmpdir / "script.lua").write_text(_WRK_SCRIPT)
        env = dict(
            os.environ,
            KAP_BENCH_REQUEST=str(tmpdir / "request.tsv"),
            KAP_BENCH_EXPECT=str(expect_status),
        )
        cmd = [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(tmpdir / "script.lua"),
            url,
        ]
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("KAP_WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {proc.stderr.strip()[:500]}")
    data = json.loads(line.removeprefix("KAP_WRK_JSON "))
    seconds = data["duration_us"] / 1e6
    transport = data["connect"] + data["read"] + data["write"] + data["timeout"]
    ok = data["statuses"].get(str(expect_status), 0)
    statuses = dict(data["statuses"])
    if transport:
        statuses["transport_error"] = transport
    if ok == 0:
        # Nothing completed within the run (every request still queued): no latency figure.
        data.update(p50_us=None, p90_us=None, p99_us=None, max_us=None)

    def ms(us: float | None) -> float | None:
        return None if us is None else round(us / 1000, 3)

    return LoadResult(
        driver="wrk",
        method=method,
        path=path,
        connections=connections,
        duration_s=round(seconds, 3),
        requests=ok,
        errors=data["requests"] - ok + transport,
        rps=round(ok / seconds, 1) if seconds > 0 else 0.0,
        p50_ms=ms(data["p50_us"]),
        p90_ms=ms(data["p90_us"]),
        p99_ms=ms(data["p99_us"]),
        max_ms=ms(data["max_us"]),
        statuses=statuses,
    )


def run_load(url: str, *, driver: str = "auto", **kwargs) -> LoadResult:
    """Run one load test with wrk if ``driver`` is "wrk" or "auto" and wrk exists, else Python."""
    if driver == "wrk" or (driver == "auto" and wrk_available()):
        return run_wrk(url, **kwargs)
    kwargs.pop("threads", None)
    return run_python(url, **kwargs)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="http://127.0.0.1:PORT/path (loopback only)")
    p.add_argument("-m", "--method", default="GET", help="HTTP method")
    p.add_argument("-c", "--connections", type=int, default=16, help="concurrent connections")
    p.add_argument("-d", "--duration", type=float, default=10.0, help="seconds (max 120)")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--body-file", type=Path, help="request body (JSON)")
    p.add_argument("--expect", type=int, default=200, help="status counted as success")
    p.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print one JSON result."""
    args = _parse_args(argv)
    headers = {}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    body = args.body_file.read_bytes() if args.body_file else None
    try:
        check_loopback(args.url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = run_load(
        args.url,
        driver=args.driver,
        method=args.method,
        headers=headers,
        body=body,
        connections=args.connections,
        duration=args.duration,
        expect_status=args.expect,
    )
    print(json.dumps(result.as_dict(), indent=2))
    return 0 if result.requests and not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
