"""Progress of long commands on stderr: a bar on a terminal, log lines otherwise.

On a terminal a tqdm bar; when stderr is not a terminal (a job log, CI), a
line ``forecast <command>: <stage> 40% elapsed 0:01:12 ETA 0:01:48`` at each
step and at least every ``FORECAST_PROGRESS_SECONDS`` (default 10) while a
step runs; nothing with ``forecast --quiet`` (or ``FORECAST_QUIET=1``).
stdout is never used (``train`` prints only the version id there).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import Any

import click

INTERVAL_ENV = "FORECAST_PROGRESS_SECONDS"


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def quiet() -> bool:
    """Whether ``--quiet`` (or FORECAST_QUIET) is in force for the current command."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().meta.get("forecast.quiet"):
        return True
    return str(os.environ.get("FORECAST_QUIET", "")).lower() in ("1", "true", "yes")


class Progress:
    """``with Progress(total, "train") as p: p.stage("fit"); p.update()``."""

    def __init__(self, total: int, name: str, *, stream: Any = None,
                 interval: float | None = None, tty: bool | None = None,
                 enabled: bool | None = None) -> None:
        self.total = max(int(total), 1)
        self.name = name
        self.done = 0
        self.stage_name = ""
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = (not quiet()) if enabled is None else enabled
        is_tty = tty if tty is not None else bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = float(interval if interval is not None
                               else os.environ.get(INTERVAL_ENV, 10) or 10)
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._use_bar = self._enabled and is_tty

    # ------------------------------------------------------------ context
    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self._use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.name, file=self._stream, leave=False)
        elif self._enabled:
            self._line()
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name=f"progress-{self.name}")
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self._bar is not None:
            self._bar.close()
        elif self._enabled and exc_type is None:
            self.done = self.total
            self.stage_name = "done"
            self._line()

    # ------------------------------------------------------------ updates
    def stage(self, name: str) -> None:
        """Name the step that runs now."""
        self.stage_name = name
        if self._bar is not None:
            self._bar.set_postfix_str(name)
        elif self._enabled:
            self._line()

    def update(self, n: int = 1) -> None:
        """Count ``n`` finished units of work."""
        self.done = min(self.done + int(n), self.total)
        if self._bar is not None:
            self._bar.update(n)
        elif self._enabled:
            self._line()

    def text(self) -> str:
        """The log line of the current state."""
        elapsed = time.monotonic() - self._start
        pct = 100.0 * self.done / self.total
        eta = _clock(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        stage = f" {self.stage_name}" if self.stage_name else ""
        return (f"forecast {self.name}:{stage} {pct:.0f}% elapsed {_clock(elapsed)} "
                f"ETA {eta}")

    def _line(self) -> None:
        with self._lock:
            print(self.text(), file=self._stream, flush=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            self._line()
