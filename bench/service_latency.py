"""Figures of the service README section (docs/readme/service.md).

Starts the production command (gunicorn, 2 gthread workers x 4 threads) on a
free loopback port with a temporary SQLite store and a model trained on 400
simulated patients, then measures, one client at a time:

1. ``POST /api/v1/patients/{id}/assessments`` with one item (acknowledged =
   committed with synchronous=FULL), and the same POST retried (unchanged);
2. ``GET /api/v1/patients/{id}/forecast`` of a stored patient;
3. ``POST /api/v1/forecast/batch`` for 1,000 stored patients in one call, and
   for the same 1,000 histories sent in the body (stateless);
4. ``POST /api/v1/model/reload``.

Usage: ``.venv/bin/python bench/service_latency.py [--repeat 100]``. Prints a
table and writes ``bench/out/service_latency.json``. Takes about a minute.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
FORECAST = str(Path(sys.executable).with_name("forecast"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quantiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
    }


def _timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    """Run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=100, help="requests per measurement")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from forecast.simulation import simulate, write_simulation
    from service.api import records_json
    from service.store import Store, row_hash

    tmp = Path(tempfile.mkdtemp(prefix="kap-service-bench-"))
    folder = write_simulation(simulate(400, 20261127), tmp / "clinic")
    models = tmp / "models"
    subprocess.run(
        [FORECAST, "train", str(folder), "--models", str(models)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(os.environ)
    env.update(
        {
            "FORECAST_DATABASE_URL": f"sqlite:///{tmp / 'service.sqlite'}",
            "FORECAST_MODELS": str(models),
            "FORECAST_INSTANCE_PATH": str(tmp / "instance"),
        }
    )
    token = subprocess.run(
        [FORECAST, "tokens", "create", "--role", "admin", "--name", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # 1,000 stored patients for the batch, loaded directly (setup, not measured).
    cohort = simulate(1000, 99).cohort
    st = Store(env["FORECAST_DATABASE_URL"])
    with st.write() as conn:
        for rec in cohort.patients.to_dict("records"):
            st.upsert_patient(conn, rec)
        for table in ("sessions", "assessments"):
            rows = getattr(cohort, table).to_dict("records")
            st.insert_history(
                conn, table, [{**r, "content_hash": row_hash(table, r)} for r in rows]
            )
    st.dispose()

    port = _free_port()
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-k",
            "gthread",
            "--threads",
            "4",
            "--timeout",
            "30",
            "--no-control-socket",
            "-b",
            f"127.0.0.1:{port}",
            "service.app:create_app()",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    results: dict[str, Any] = {}
    try:
        for _ in range(600):
            try:
                if requests.get(base + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        pid = str(cohort.patients["patient_id"].iloc[0])
        s.put(f"{base}/patients/bench-p", json={}).raise_for_status()

        def post(i: int) -> None:
            day = (dt.date(1990, 1, 1) + dt.timedelta(days=i)).isoformat()
            body = {"assessments": [{"id": f"b{i}", "date": day, "phq9_total": i % 28}]}
            assert s.post(f"{base}/patients/bench-p/assessments", json=body).status_code == 201

        results["post_one_assessment"] = _quantiles(_timed(post, args.repeat))

        def retry(i: int) -> None:
            day = (dt.date(1990, 1, 1) + dt.timedelta(days=i)).isoformat()
            body = {"assessments": [{"id": f"b{i}", "date": day, "phq9_total": i % 28}]}
            assert s.post(f"{base}/patients/bench-p/assessments", json=body).status_code == 200

        results["retry_unchanged"] = _quantiles(_timed(retry, args.repeat))
        results["stored_forecast"] = _quantiles(
            _timed(
                lambda i: s.get(
                    f"{base}/patients/{pid}/forecast?as_of=2026-06-01"
                ).raise_for_status(),
                args.repeat,
            )
        )
        body = {
            "as_of": "2026-06-01",
            "patients": [{"patient_id": p} for p in cohort.patients["patient_id"]],
        }
        results["batch_1000_stored"] = _quantiles(
            _timed(lambda i: s.post(f"{base}/forecast/batch", json=body).raise_for_status(), 5)
        )
        by_pid = {
            t: {p: records_json(g, t) for p, g in getattr(cohort, t).groupby("patient_id")}
            for t in ("sessions", "assessments")
        }
        histories = [
            {
                "patient": {"patient_id": p},
                "sessions": by_pid["sessions"].get(p, []),
                "assessments": by_pid["assessments"].get(p, []),
            }
            for p in cohort.patients["patient_id"]
        ]
        stateless = {"as_of": "2026-06-01", "histories": histories}
        results["batch_1000_histories"] = _quantiles(
            _timed(lambda i: s.post(f"{base}/forecast/batch", json=stateless).raise_for_status(), 5)
        )
        results["model_reload"] = _quantiles(
            _timed(lambda i: s.post(f"{base}/model/reload").raise_for_status(), 10)
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "service_latency.json").write_text(json.dumps(results, indent=2))
    print(f"{'measurement':28} {'n':>5} {'p50 ms':>9} {'p95 ms':>9}")
    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name:28} {r['n']:>5} {r['p50_ms']:>9} {r['p95_ms']:>9}")


if __name__ == "__main__":
    main()
