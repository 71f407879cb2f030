"""Training on Dask vs one machine: wall time and peak memory (100k; 1M with ``--million``).

For each size a partitioned cohort is simulated (``forecast simulate
--patients-per-part``, not timed; reused when the folder already holds it),
then trained:

- ``single``: ``forecast train DIR`` in a child process (the same partitioned
  folder, read and concatenated); peak memory is the child's ``ru_maxrss``;
- ``dask``: ``forecast.distributed.train.train_and_save_dask`` on a
  LocalCluster of ``--workers`` worker processes limited to ``--memory-limit``
  each; peak memory per worker is the highest RSS seen by polling the
  workers every 0.5 s (the client process's own peak is reported too).

Both train the default kind with ``--bootstrap`` refits (the 1M run with
``--million-bootstrap``, default 0) and the same seed; the
100k run also reports the largest difference between the two versions'
coefficients. Writes bench/out/dask_scale.json and prints a table.

Usage::

    python bench/dask_scale.py                      # 100k: single machine vs Dask
    python bench/dask_scale.py --million            # and 1M on Dask, no refits (about 10 min)
    python bench/dask_scale.py --sizes 20000 --bootstrap 5 --work /tmp/dask-bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
OUT = BENCH_DIR / "out" / "dask_scale.json"
FORECAST = str(Path(sys.executable).parent / "forecast")


def simulate(n: int, per_part: int, folder: Path, seed: int) -> None:
    """The partitioned cohort of ``n`` patients in ``folder`` (kept when already there)."""
    if (folder / "patients").is_dir():
        return
    subprocess.run([FORECAST, "simulate", "--patients", str(n), "--seed", str(seed),
                    "--patients-per-part", str(per_part), "--out", str(folder)],
                   check=True, capture_output=True)


def train_single(folder: Path, models: Path, bootstrap: int, seed: int) -> dict[str, Any]:
    """``forecast train`` in a child process: wall time and the child's peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    out = subprocess.run([FORECAST, "train", str(folder), "--models", str(models),
                          "--bootstrap", str(bootstrap), "--seed", str(seed)],
                         check=True, capture_output=True, text=True,
                         env={**os.environ, "FORECAST_QUIET": "1"})
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(seconds, 1), "peak_gb": round(max(peak, before) / 2**20, 2),
            "version": out.stdout.strip().splitlines()[-1]}


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class WorkerPeaks:
    """Polls each worker's RSS in a thread; ``peaks`` maps worker address -> highest bytes."""

    def __init__(self, client: Any, every: float = 0.5) -> None:
        self.client, self.every = client, every
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                for addr, rss in self.client.run(_rss).items():
                    self.peaks[addr] = max(self.peaks.get(addr, 0), int(rss))
            except Exception:  # noqa: BLE001, S110 - a busy or closing worker: next poll
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> WorkerPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def train_dask(folder: Path, models: Path, bootstrap: int, seed: int, workers: int,
               memory_limit: str) -> dict[str, Any]:
    """``train_and_save_dask`` on a LocalCluster: wall time and per-worker peak RSS."""
    from forecast.distributed import close, connect
    from forecast.distributed.train import train_and_save_dask

    client = connect(f"local:{workers}", memory_limit)
    try:
        with WorkerPeaks(client) as peaks:
            t0 = time.perf_counter()
            version = train_and_save_dask(client, folder, models, n_bootstrap=bootstrap,
                                          seed=seed)
            seconds = time.perf_counter() - t0
    finally:
        close(client)
    client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": round(seconds, 1), "workers": workers, "memory_limit": memory_limit,
            "worker_peak_gb": sorted(round(v / 2**30, 2) for v in peaks.peaks.values()),
            "client_peak_gb": round(client_peak, 2), "version": version}


def max_difference(models: Path, a: str, b: str) -> float:
    """Largest absolute difference between two versions' bundle arrays."""
    import numpy as np

    from forecast import registry

    x, y = registry.load(a, models).bundle.arrays, registry.load(b, models).bundle.arrays
    return float(max(np.max(np.abs(x[k] - y[k])) for k in x))


def run(sizes: list[int], per_part: dict[int, int], work: Path, bootstraps: dict[int, int],
        seed: int, workers: int, memory_limit: str, single_up_to: int) -> list[dict[str, Any]]:
    rows = []
    models = work / "models"
    for n in sizes:
        bootstrap = bootstraps[n]
        folder = work / f"sim-{n}"
        simulate(n, per_part.get(n, max(1000, n // 50)), folder, seed)
        row: dict[str, Any] = {"patients": n, "parts": len(list((folder / "patients").iterdir())),
                               "bootstrap": bootstrap}
        if n <= single_up_to:
            row["single"] = train_single(folder, models, bootstrap, seed)
        row["dask"] = train_dask(folder, models, bootstrap, seed, workers, memory_limit)
        if "single" in row:
            row["max_abs_difference"] = max_difference(models, row["single"]["version"],
                                                       row["dask"]["version"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000", help="Comma-separated patient counts.")
    ap.add_argument("--million", action="store_true", help="Add 1,000,000 patients (Dask only).")
    ap.add_argument("--bootstrap", type=int, default=30)
    ap.add_argument("--million-bootstrap", type=int, default=0,
                    help="Bootstrap refits of the 1M run (each is a pass over every part per "
                    "L-BFGS step: 30 take hours on two cores).")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--single-up-to", type=int, default=100_000,
                    help="Largest size also trained on one machine.")
    ap.add_argument("--work", type=Path, default=None,
                    help="Folder for the cohorts and models (default: a temporary one).")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.million:
        sizes.append(1_000_000)
    per_part = {100_000: 10_000, 1_000_000: 20_000}
    os.environ.setdefault("FORECAST_SIGNING_KEY_FILE", "")
    with tempfile.TemporaryDirectory(prefix="dask-bench-") as tmp:
        work = args.work or Path(tmp)
        bootstraps = {n: args.million_bootstrap if n == 1_000_000 else args.bootstrap
                      for n in sizes}
        rows = run(sizes, per_part, work, bootstraps, args.seed, args.workers,
                   args.memory_limit, args.single_up_to)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"rows": rows}, indent=2))
    for r in rows:
        single = r.get("single", {})
        d = r["dask"]
        print(f"{r['patients']:>9} patients, {r['parts']} parts: single "
              f"{single.get('seconds', '-')} s / {single.get('peak_gb', '-')} GB; Dask "
              f"{d['workers']} workers x {d['memory_limit']}: {d['seconds']} s, worker peaks "
              f"{d['worker_peak_gb']} GB; max |difference| {r.get('max_abs_difference', '-')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
