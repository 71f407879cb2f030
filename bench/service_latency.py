"""One-client latencies of the service (section 4 of ``make bench``; docs/benchmarks.md).

1. In process (CPU time per call, so that other jobs on the machine matter
   less): the service's own steps of one forecast request (loading a stored
   patient, validating a posted history, the audit's inputs hash, the policy)
   and a bulk load of 1,000 patients through ``service.ingest.ingest_many``.
   With ``--baseline DIR`` the model-free steps are also timed, in the same
   run, on another source tree (e.g. the last commit:
   ``git archive HEAD | tar -x -C /tmp/base``), which gives before/after
   figures measured under the same machine load.
2. Over HTTP: the production command (gunicorn, 2 gthread workers x 4
   threads) on a free loopback port with a temporary SQLite store and a model
   trained on 400 simulated patients; one client at a time:

   - ``POST /api/v1/patients/{id}/assessments`` with one item (acknowledged =
     committed with synchronous=FULL), and the same POST retried (unchanged);
   - ``GET /api/v1/patients/{id}/forecast`` of a stored patient, and
     ``POST /api/v1/forecast`` with the same history in the body;
   - ``POST /api/v1/forecast/batch`` for 1,000 stored patients in one call, and
     for the same 1,000 histories sent in the body (stateless);
   - ``POST /api/v1/model/reload``;

   then 16 connections for ``--load-seconds`` each (``tests/fixtures/http_load.py``,
   wrk when installed) on the bare ``GET /api/v1/health``, the stored and the
   stateless forecast.

Usage: ``.venv/bin/python bench/service_latency.py [--repeat 100] [--baseline DIR]``.
Prints a table and writes ``bench/out/service_latency.json`` (with the load
average before and after). Takes two to three minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
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

ROOT = Path(__file__).resolve().parent.parent
AS_OF = "2026-06-01"


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


def _cpu_ms(fn: Any, repeat: int) -> float:
    """Median CPU milliseconds of ``fn()`` over ``repeat`` calls (after one warm-up).

    A full garbage collection first, so that no step pays for the garbage of
    the one before.
    """
    fn()
    gc.collect()
    out = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        out.append((time.process_time() - t) * 1000)
    return round(statistics.median(out), 3)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _histories(cohort: Any) -> tuple[dict[str, dict[str, list]], list[dict[str, Any]]]:
    """JSON items per table and patient, and the patients' covariate records."""
    try:
        from service.histories import records_json
    except ImportError:  # a baseline tree from before the service restructure
        from service.api import records_json

    by = {
        t: {p: records_json(g, t) for p, g in getattr(cohort, t).groupby("patient_id")}
        for t in ("sessions", "assessments")
    }
    patients = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        for r in cohort.patients.to_dict("records")
    ]
    return by, patients


# --------------------------------------------------------------------------- in process
def inprocess(repeat: int, models: str | None) -> dict[str, Any]:
    """CPU time of the service's steps in this interpreter's source tree.

    ``models``: a registry folder; without it the policy step is skipped (a
    baseline tree may not read the current registry format).
    """
    import pandas as pd

    from forecast.simulation import simulate
    try:
        from service.histories import stateless_cohort as _stateless_cohort
        from service.serving import inputs_hashes
    except ImportError:  # a baseline tree from before the service restructure
        from service.api import _stateless_cohort, inputs_hashes
    from service.ingest import ingest_many
    from service.store import Store

    out: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="kap-service-inproc-"))
    cohort = simulate(1000, 99).cohort
    by, patients = _histories(cohort)
    pids = list(cohort.patients["patient_id"])
    items = [
        (p, t, [dict(r, id=f"{t[0]}{i}") for i, r in enumerate(by[t].get(p, []))])
        for p in pids
        for t in ("sessions", "assessments")
    ]
    st = Store(f"sqlite:///{tmp / 'bulk.sqlite'}")
    st.migrate()
    t, c = time.perf_counter(), time.process_time()
    ingest_many(st, items, patients=patients)
    out["ingest_1000_patients"] = {
        "rows": sum(len(i[2]) for i in items),
        "wall_s": round(time.perf_counter() - t, 2),
        "cpu_s": round(time.process_time() - c, 2),
    }
    t, c = time.perf_counter(), time.process_time()
    ingest_many(st, items, patients=patients)
    out["ingest_1000_patients_retried"] = {
        "wall_s": round(time.perf_counter() - t, 2),
        "cpu_s": round(time.process_time() - c, 2),
    }
    # One patient with a typical history (the patient with most rows under 30).
    sizes = cohort.assessments.groupby("patient_id").size()
    pid = str(sizes[sizes <= 30].idxmax())
    ses, ass = by["sessions"][pid], by["assessments"][pid]
    from forecast.data import validate_records

    ms: dict[str, float] = {}
    ms["validate_records_assessments"] = _cpu_ms(
        lambda: validate_records("assessments", ass, patient_id=pid), repeat
    )
    ms["validate_records_sessions"] = _cpu_ms(
        lambda: validate_records("sessions", ses, patient_id=pid), repeat
    )
    body = {"patient": {"patient_id": pid}, "sessions": ses, "assessments": ass}
    ms["stateless_history_validation"] = _cpu_ms(lambda: _stateless_cohort([(body, "")]), repeat)
    ms["store_load_one_patient"] = _cpu_ms(lambda: st.cohort([pid]), repeat)
    ms["store_load_1000_patients"] = _cpu_ms(lambda: st.cohort(pids), max(5, repeat // 10))
    one = st.cohort([pid])
    queries = pd.DataFrame({"patient_id": [pid], "as_of": [pd.Timestamp(AS_OF)], "threshold": 0.2})
    ms["inputs_hash_one_patient"] = _cpu_ms(lambda: inputs_hashes(one, queries, "v"), repeat)
    if models is not None:
        from forecast import registry
        from forecast.policy import PolicySettings, forecast_queries

        model = registry.load("latest", models_dir=models)
        settings = PolicySettings()
        ms["policy_one_patient"] = _cpu_ms(
            lambda: forecast_queries(one, model, queries, settings), repeat
        )
    st.dispose()
    out["cpu_ms_per_call"] = ms
    out["patient_rows"] = {"sessions": len(ses), "assessments": len(ass)}
    return out


def baseline(tree: Path, repeat: int) -> dict[str, Any]:
    """:func:`inprocess` (model-free steps) run on another source tree, in a subprocess."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        "import service_latency as b; print(json.dumps(b.inprocess(int(sys.argv[3]), None)))"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(tree), str(repeat)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tree,
        env=env,
        timeout=1800,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- HTTP
def http(
    repeat: int, load_seconds: float, models: Path, tmp: Path, threads: int = 4
) -> dict[str, Any]:
    """The HTTP measurements against gunicorn (see the module docstring)."""
    import requests

    from forecast.simulation import simulate
    from service.app import open_store
    from service.ingest import ingest_many

    env = dict(os.environ)
    env.update(
        {
            "FORECAST_DATABASE_URL": f"sqlite:///{tmp / 'service.sqlite'}",
            "FORECAST_MODELS": str(models),
            "FORECAST_INSTANCE_PATH": str(tmp / "instance"),
        }
    )
    st = open_store(
        {"KAP_DATABASE_URL": env["FORECAST_DATABASE_URL"], "INSTANCE_PATH": str(tmp / "instance")}
    )
    token = st.create_token("bench", "admin")
    # 1,000 stored patients for the batch (setup, not measured).
    cohort = simulate(1000, 99).cohort
    by, patients = _histories(cohort)
    pids = list(cohort.patients["patient_id"])
    ingest_many(
        st,
        [(p, t, by[t].get(p, [])) for p in pids for t in ("sessions", "assessments")],
        patients=patients,
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
            str(threads),
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
        s.put(f"{base}/patients/bench-p", json={}).raise_for_status()

        def post(i: int) -> None:
            day = (dt.date(1990, 1, 1) + dt.timedelta(days=i)).isoformat()
            body = {"assessments": [{"id": f"b{i}", "date": day, "phq9_total": i % 28}]}
            assert s.post(f"{base}/patients/bench-p/assessments", json=body).status_code == 201

        results["post_one_assessment"] = _quantiles(_timed(post, repeat))

        def retry(i: int) -> None:
            day = (dt.date(1990, 1, 1) + dt.timedelta(days=i)).isoformat()
            body = {"assessments": [{"id": f"b{i}", "date": day, "phq9_total": i % 28}]}
            assert s.post(f"{base}/patients/bench-p/assessments", json=body).status_code == 200

        results["retry_unchanged"] = _quantiles(_timed(retry, repeat))
        # A patient whose forecast runs the model (status routine or session_due).
        pid = pids[0]
        for p in pids:
            answer = s.get(f"{base}/patients/{p}/forecast?as_of={AS_OF}").json()
            if answer.get("status") in ("routine", "session_due"):
                pid = p
                break
        one = f"{base}/patients/{pid}/forecast?as_of={AS_OF}"
        results["stored_forecast"] = _quantiles(
            _timed(lambda i: s.get(one).raise_for_status(), repeat)
        )
        stateless_one = {
            "patient": {"patient_id": pid},
            "sessions": by["sessions"].get(pid, []),
            "assessments": by["assessments"].get(pid, []),
            "as_of": AS_OF,
        }
        results["stateless_forecast"] = _quantiles(
            _timed(
                lambda i: s.post(f"{base}/forecast", json=stateless_one).raise_for_status(),
                repeat,
            )
        )
        body = {"as_of": AS_OF, "patients": [{"patient_id": p} for p in pids]}
        results["batch_1000_stored"] = _quantiles(
            _timed(lambda i: s.post(f"{base}/forecast/batch", json=body).raise_for_status(), 5)
        )
        histories = [
            {
                "patient": {"patient_id": p},
                "sessions": by["sessions"].get(p, []),
                "assessments": by["assessments"].get(p, []),
            }
            for p in pids
        ]
        stateless = {"as_of": AS_OF, "histories": histories}
        results["batch_1000_histories"] = _quantiles(
            _timed(lambda i: s.post(f"{base}/forecast/batch", json=stateless).raise_for_status(), 5)
        )
        results["model_reload"] = _quantiles(
            _timed(lambda i: s.post(f"{base}/model/reload").raise_for_status(), 10)
        )
        if load_seconds > 0:
            results["load_16_connections"] = _load_runs(
                f"http://127.0.0.1:{port}", token, one, stateless_one, load_seconds
            )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    return results


def _load_runs(
    root: str, token: str, one: str, stateless_one: dict[str, Any], seconds: float
) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fixtures.http_load import run_load

    auth = {"Authorization": f"Bearer {token}"}
    body = json.dumps(stateless_one).encode()
    out: dict[str, Any] = {}
    for name, url, kw in (
        ("health", f"{root}/api/v1/health", {}),
        ("stored_forecast", one, {"headers": auth}),
        (
            "stateless_forecast",
            f"{root}/api/v1/forecast",
            {"headers": auth, "method": "POST", "body": body},
        ),
    ):
        r = run_load(url, connections=16, duration=seconds, **kw)
        out[name] = {
            "driver": r.driver,
            "rps": round(r.rps, 1),
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "errors": r.errors,
        }
    bare = out["health"]["rps"] or 1.0
    for name in ("stored_forecast", "stateless_forecast"):
        out[name]["share_of_bare"] = round(out[name]["rps"] / bare, 3)
    return out


# --------------------------------------------------------------------------- main
def main() -> None:
    """Run the measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=100, help="requests per measurement")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another source tree whose model-free steps are timed in the same run",
    )
    parser.add_argument(
        "--load-seconds", type=float, default=5.0, help="seconds per 16-connection run (0: none)"
    )
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    parser.add_argument(
        "--threads", type=int, default=4, help="gunicorn threads per worker (production: 4)"
    )
    parser.add_argument(
        "--no-inprocess", action="store_true", help="HTTP figures only (no in-process steps)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from forecast.data import load_cohort
    from forecast.simulation import simulate, write_simulation
    from forecast.training import train_and_save

    results: dict[str, Any] = {"load_average_before": _load()}
    tmp = Path(tempfile.mkdtemp(prefix="kap-service-bench-"))
    folder = write_simulation(simulate(400, 20261127), tmp / "clinic")
    models = tmp / "models"
    train_and_save(load_cohort(folder), models, seed=1, simulated=True)
    if not args.no_inprocess:
        results["inprocess"] = inprocess(max(20, args.repeat), str(models))
    if args.baseline is not None:
        results["inprocess_baseline"] = baseline(args.baseline.resolve(), max(20, args.repeat))
    if not args.no_http:
        results["gunicorn_threads"] = args.threads
        results.update(http(args.repeat, args.load_seconds, models, tmp, args.threads))
    results["load_average_after"] = _load()
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "service_latency.json").write_text(json.dumps(results, indent=2))
    _print(results)


def _print(results: dict[str, Any]) -> None:
    print(f"load average before {results['load_average_before']}")
    now = results.get("inprocess")
    base = results.get("inprocess_baseline")
    if now:
        print(f"\n{'in process (CPU ms per call)':34} {'now':>9} {'baseline':>9}")
        for name, value in now["cpu_ms_per_call"].items():
            b = base["cpu_ms_per_call"].get(name) if base else None
            print(f"{name:34} {value:>9.2f} {'' if b is None else f'{b:9.2f}':>9}")
        for key in ("ingest_1000_patients", "ingest_1000_patients_retried"):
            b = base[key] if base else None
            print(
                f"{key + ' (cpu s / wall s)':34} {now[key]['cpu_s']:>4} / {now[key]['wall_s']:<4}"
                + (f" {b['cpu_s']:>4} / {b['wall_s']}" if b else "")
            )
    http_rows = {k: v for k, v in results.items() if isinstance(v, dict) and "p50_ms" in v}
    if http_rows:
        print(f"\n{'HTTP, one client':28} {'n':>5} {'p50 ms':>9} {'p95 ms':>9}")
        for name, r in http_rows.items():
            print(f"{name:28} {r['n']:>5} {r['p50_ms']:>9} {r['p95_ms']:>9}")
    load = results.get("load_16_connections")
    if load:
        print(
            f"\n{'HTTP, 16 connections':28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'share':>6}"
        )
        for name, r in load.items():
            print(
                f"{name:28} {r['rps']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                f"{r.get('share_of_bare', ''):>6}"
            )
    print(f"load average after {results['load_average_after']}")


if __name__ == "__main__":
    main()
