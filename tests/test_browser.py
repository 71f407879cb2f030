"""A real browser (headless Chromium) signs in and loads the clinician page.

The page is served by a live server on loopback; Chromium is driven through
the DevTools protocol over ``--remote-debugging-pipe`` (file descriptors 3
and 4, NUL-separated JSON), so no extra Python package is needed. Chromium is
installed from Debian's ``chromium`` package when ``/usr/bin/chromium`` is
missing. Screenshots go to tests/_artifacts/ (git-ignored) for a human to look
at; the test asserts what the page shows through the DOM and that the
screenshots are real images.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.clinic import ROUTINE, URGENT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "_artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)


def ensure_chromium() -> Path:
    """Install Debian's chromium package if the browser is missing (CI images lack it)."""
    if CHROMIUM.exists():
        return CHROMIUM
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    assert CHROMIUM.exists(), "the chromium package did not provide /usr/bin/chromium"
    return CHROMIUM


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: Path, profile: Path):
        self._to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, self._from_child_w = os.pipe()
        to_r, from_w = self._to_child_r, self._from_child_w
        # Chromium reads commands on fd 3 and writes answers on fd 4. A tiny Python
        # launcher moves the pipe ends there and execs the browser (no preexec_fn,
        # which is unsafe in a process that runs the live server's threads).
        launcher = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
            "os.execv(sys.argv[3], sys.argv[3:])"
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                launcher,
                str(to_r),
                str(from_w),
                str(binary),
                *FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_r, from_w),
        )
        os.close(self._to_child_r)
        os.close(self._from_child_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read(self, timeout: float) -> dict[str, Any] | None:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_child_r], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self._from_child_r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the debugging pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        """Send one command (to the attached page if any) and wait for its result."""
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._to_child_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read(max(0.05, deadline - time.monotonic()))
            if reply is None:
                break
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(f"no answer to {method}")

    def wait_event(self, name: str, timeout: float = 30) -> dict:
        """Wait for (and consume) the next event called ``name``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == name:
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {name} event")
            reply = self._read(left)
            if reply is not None:
                self.events.append(reply)

    def open_page(self) -> None:
        """Attach to the first page target and enable page events."""
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
        )["sessionId"]
        self.send("Page.enable")

    def navigate(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return the value."""
        out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return out["result"].get("value")

    def screenshot(self, path: Path, width: int, height: int) -> bytes:
        """Save a PNG of the page at the given viewport size."""
        import base64

        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 900},
        )
        time.sleep(0.3)  # let the layout settle after the resize
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        """Stop the browser (this process only)."""
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_child_w, self._from_child_r):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def live_server(clinic_client: Any) -> Iterator[tuple[str, Any]]:
    """The clinic app served by werkzeug on 127.0.0.1 (a free port) in a thread."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, clinic_client.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", clinic_client
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.slow
def test_clinician_page_in_a_real_browser(live_server: tuple[str, Any], tmp_path: Path) -> None:
    base, client = live_server
    binary = ensure_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    forecast = client.get(f"/api/v1/patients/{ROUTINE}/forecast").get_json()
    by = forecast["suggestion"]["session_by"]
    assert by is not None

    browser = DevTools(binary, tmp_path / "profile")
    try:
        browser.open_page()
        # Sign in through the form, as a clinician would.
        browser.navigate(f"{base}/login?next=/patients/{ROUTINE}")
        token = json.dumps(client.tokens["clinician"])
        browser.events.clear()
        browser.js(
            f"document.getElementById('token').value = {token};"
            "document.querySelector('main form').submit();"
        )
        browser.wait_event("Page.loadEventFired")
        assert browser.js("location.pathname") == f"/patients/{ROUTINE}"

        from forecast.policy.texts import human_date as _human

        text = browser.js("document.body.innerText")
        assert f"Next maintenance session by {_human(by)}" in text or (
            forecast["status"] == "session_due" and _human(by) in text
        )
        assert "No suicidal-ideation rule was triggered" in text
        # Both charts are laid out at a useful size.
        sizes = browser.js(
            "[...document.querySelectorAll('svg.chart')].map(s => s.getBoundingClientRect().width)"
        )
        assert len(sizes) == 2
        laptop = browser.screenshot(ARTIFACTS / "patient_page_laptop.png", 1280, 1800)
        assert min(sizes) > 500
        tablet = browser.screenshot(ARTIFACTS / "patient_page_tablet.png", 820, 1180)
        # On a tablet the page does not scroll sideways.
        assert browser.js("document.documentElement.scrollWidth <= window.innerWidth + 1")

        browser.send("Emulation.clearDeviceMetricsOverride")
        browser.navigate(f"{base}/patients/{URGENT}")
        urgent_text = browser.js("document.querySelector('.banner.urgent').innerText")
        assert "Urgent" in urgent_text
        assert "C-SSRS screener ideation level 4" in urgent_text
        urgent = browser.screenshot(ARTIFACTS / "patient_page_urgent.png", 1280, 1800)
    finally:
        browser.close()
    for data, width in ((laptop, 1280), (tablet, 820), (urgent, 1280)):
        w, h = _png_size(data)
        assert w == width
        assert h > 1000
        assert len(data) > 40_000, "the screenshot is nearly empty"
    assert shutil.which(str(binary))
