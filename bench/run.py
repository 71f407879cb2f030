"""The one benchmark command: ``make bench`` (``.venv/bin/python bench/run.py``).

It measures four things and writes them to ``bench/results.json`` and to
``docs/benchmarks-results.md`` (both git-ignored; the docs' Benchmarks page includes the
latter and explains each figure), then prints one table:

1. serving bundle vs lifelines' ``predict_survival_function`` on the same model, for
   1 and 10,000 patients (``bench/bundle_vs_lifelines.py``, run as a subprocess);
2. the training pipeline on 10k and 100k simulated patients, wall time and peak
   memory per stage (``bench/train_scale.py``, a subprocess; ``--quick`` skips 100k);
3. HTTP throughput and latency of the production server (gunicorn, 2 workers x 4
   threads, on 127.0.0.1 with a free port, SQLite store and model registry in a
   temporary folder, a clinician token from ``forecast tokens create``) for the
   stored-patient, stateless, CDS Hooks patient-view and batch forecasts, each beside
   the bare ``GET /api/v1/health`` of the same server in the same run, at 16
   connections (wrk if installed, else ``tests/fixtures/http_load.py``), with a py-spy
   profile of each forecast endpoint taken in a second, unmeasured run;
4. ``store``: the stored forecast against a bulk-seeded store of 100,000 patients,
   3 million assessments and a million audit rows, on SQLite and PostgreSQL
   (``bench/store_scale.py``), with a batch of 1,000 stored patients and a FHIR
   RiskAssessment read by id;
5. ``predict``: ``forecast predict`` on 100,000 simulated patients;
6. one-client service latencies (``bench/service_latency.py``, a subprocess);
7. forecasts at the point of care per assessment schedule: coverage, calibration,
   AUC against the oracle, totals-only movement, daily-curve shape
   (``bench/point_of_care.py``, a subprocess);
8. ``schedules``: the default model trained on each assessment schedule of one latent
   cohort, forecasting the same held-out states (``bench/schedule_invariance.py``);
9. training on Dask vs one machine: 100k patients both ways (20k with ``--quick``),
   1M on Dask with ``--dask-million`` (``bench/dask_scale.py``, a subprocess).

Every section is bounded in time and runs even when an earlier one failed; a failed
section is recorded with its error and makes the exit status 1. Each section records
when it ran and the load average before and after it.

Usage::

    python bench/run.py            # everything (about 8 minutes on 2 idle cores)
    python bench/run.py --quick    # skip the 100k training run, 5 s per endpoint
    python bench/run.py --only http --merge   # redo one section, keep the rest
    python bench/run.py --only store --only predict   # issue 23's store scale and predict
    python bench/run.py --page-only   # rewrite the docs page from bench/results.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
RESULTS = BENCH_DIR / "results.json"
#: The generated part of the docs' Benchmarks page (git-ignored; docs/benchmarks.md
#: includes it when it exists).
RESULTS_PAGE = ROOT / "docs" / "benchmarks-results.md"
sys.path.insert(0, str(ROOT))

# The bounded loopback load generator lives with the tests, which check its safety rules.
from tests.fixtures import http_load  # noqa: E402

#: Targets of issues 7 and 23 (docs/benchmarks.md).
TARGET_BUNDLE_SPEEDUP = 100.0
TARGET_THROUGHPUT_SHARE = 0.5
TARGET_P99_MS = 20.0
#: CDS Hooks patient-view: share of the bare endpoint's requests per second.
TARGET_CDS_SHARE = 0.3
#: A batch of 1,000 stored patients: milliseconds of server time (one client).
TARGET_BATCH_1000_MS = 100.0
#: ``forecast predict`` on 100,000 patients: seconds.
TARGET_PREDICT_100K_S = 10.0

#: The store of the ``store`` section (issue 23): patients, assessments, audit rows.
STORE_PATIENTS = 100_000
STORE_ASSESSMENTS = 3_000_000
STORE_AUDIT_ROWS = 1_000_000
#: The PostgreSQL server of the ``store`` section (a private schema, dropped after).
STORE_PG_URL = os.environ.get(
    "FORECAST_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
#: Patients forecast by ``forecast predict`` in the ``predict`` section.
PREDICT_PATIENTS = 100_000

#: A CDS Hooks client of the benchmark server (HS256: FORECAST_CDS_ALLOW_HS256=1).
CDS_ISS = "https://bench-ehr.invalid"
CDS_SECRET = "bench-" + "s" * 40
CDS_PATH = "/cds-services/kap-forecast-maintenance"
CDS_AUDIENCE = "https://bench.invalid" + CDS_PATH

#: Patients simulated for the HTTP section's model and request bodies.
HTTP_COHORT_PATIENTS = 400
HTTP_COHORT_SEED = 20261127
#: Patients per POST /api/v1/forecast/batch request.
BATCH_SIZE = 10
#: Gunicorn workers and threads per worker of the production server (docs/service.md).
WORKERS = 2
THREADS = 4

SECTIONS = (
    "bundle", "train", "http", "store", "predict", "service", "care", "schedules", "dask"
)


# --------------------------------------------------------------------------- helpers


def machine_info() -> dict[str, Any]:
    """Describe the machine and its load, so figures can be compared honestly."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    wrk = shutil.which("wrk")
    wrk_version = None
    if wrk:
        proc = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
        wrk_version = (
            (proc.stdout or proc.stderr).splitlines()[0] if (proc.stdout or proc.stderr) else None
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "wrk": wrk_version,
    }


def _run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None, **kw: Any) -> str:
    """Run a subprocess, return its stdout, raise with its stderr tail on failure."""
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False, **kw
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {tail}")
    return proc.stdout


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:,.{digits}f}"
    return str(x)


# --------------------------------------------------------------------------- section 1


def bench_bundle(quick: bool) -> dict[str, Any]:
    """Run bench/bundle_vs_lifelines.py and collect bench/out/bundle.json."""
    script = BENCH_DIR / "bundle_vs_lifelines.py"
    if not script.exists():
        raise RuntimeError(f"{script.relative_to(ROOT)} does not exist yet")
    out = OUT_DIR / "bundle.json"
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    stdout = _run([sys.executable, str(script)], timeout=900, cwd=ROOT)
    data = json.loads(out.read_text())
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "figures": data,
        "stdout": stdout[-4000:],
    }


# --------------------------------------------------------------------------- section 2


def _script_section(name: str, args: list[str], timeout: int,
                    env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run bench/<name>.py with ``args`` in a subprocess and collect bench/out/<name>.json."""
    script = BENCH_DIR / f"{name}.py"
    if not script.exists():
        raise RuntimeError(f"{script.relative_to(ROOT)} does not exist yet")
    out = OUT_DIR / f"{name}.json"
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    stdout = _run([sys.executable, str(script), *args], timeout=timeout, cwd=ROOT, env=env)
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "figures": json.loads(out.read_text()),
        "stdout": stdout[-4000:],
    }


def bench_train(quick: bool) -> dict[str, Any]:
    """Run bench/train_scale.py (10k, and 100k unless quick) and collect its JSON."""
    return _script_section("train_scale", ["--quick"] if quick else [], 3000)


# --------------------------------------------------------------------------- section 4


def bench_service(quick: bool) -> dict[str, Any]:
    """Run bench/service_latency.py (one-client latencies of the service) and collect its JSON."""
    return _script_section("service_latency", ["--repeat", "20"] if quick else [], 900)


# --------------------------------------------------------------------------- section 5


def _with_root_on_path() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def bench_care(quick: bool) -> dict[str, Any]:
    """Run bench/point_of_care.py on every simulator schedule and collect its JSON."""
    size = ["--train", "1500", "--test", "3000"] if quick else ["--train", "3000", "--test", "6000"]
    return _script_section("point_of_care", [*size, "--schedules", "weekly,at-visit,sparse"],
                           3000, _with_root_on_path())


def bench_schedules(quick: bool) -> dict[str, Any]:
    """Run bench/schedule_invariance.py (one model per schedule, the same states)."""
    size = ["--train", "4000" if quick else "10000", "--test", "3000" if quick else "4000"]
    return _script_section("schedule_invariance", size, 3000, _with_root_on_path())


def bench_dask(quick: bool, million: bool) -> dict[str, Any]:
    """Run bench/dask_scale.py (100k single machine vs Dask; 1M with --dask-million)."""
    args = ["--sizes", "20000" if quick else "100000", *(["--million"] if million else [])]
    return _script_section("dask_scale", args, 7200 if million else 3000)


def dask_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/dask_scale.py's figures: one row per cohort size."""
    out = []
    for r in figures.get("rows", []):
        single, d = r.get("single", {}), r["dask"]
        out.append({
            "patients": f"{r['patients']:,}",
            "parts": r["parts"],
            "bootstrap": r["bootstrap"],
            "one machine s": single.get("seconds"),
            "one machine peak GB": single.get("peak_gb"),
            "Dask s": d["seconds"],
            "Dask workers x limit": f"{d['workers']} x {d['memory_limit']}",
            "peak GB per worker": ", ".join(str(x) for x in d["worker_peak_gb"]),
            "max abs difference": r.get("max_abs_difference"),
        })
    return out


def care_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/point_of_care.py's figures: one row per schedule and data version."""
    rows: list[dict[str, Any]] = []
    for run in figures.get("runs", []):
        for version in ("full", "totals_only"):
            f = run[version]
            rows.append(
                {
                    "schedule": run["schedule"],
                    "data": version.replace("_", "-"),
                    "n in active care": f["n_active_care"],
                    "coverage (>= 0.95)": f["coverage"],
                    "CITL 28 / 56": f"{f['citl_28']:+.3f} / {f['citl_56']:+.3f}",
                    "CITL vs latent 28 / 56": (
                        f"{f['citl_latent_28']:+.3f} / {f['citl_latent_56']:+.3f}"
                    ),
                    "ICI 28 / 56": f"{f['ici_28']:.3f} / {f['ici_56']:.3f}",
                    "AUC 28 (oracle)": f"{f['auc_28']:.3f} ({f['auc_oracle_28']:.3f})",
                    "largest 1-day rise (<= 0.10)": f["max_daily_rise"],
                    "totals-only move p90 (<= 0.08)": (
                        run["totals_only_move_28"]["p90"] if version == "totals_only" else None
                    ),
                }
            )
    for pair, d in figures.get("between_schedules_28", {}).items():
        rows.append({"schedule": pair, "data": "same latent patients, each schedule's records",
                     "CITL 28 / 56": f"|risk 28 difference| median {d['median']:.3f}, "
                                     f"p90 {d['p90']:.3f}"})
    return rows


def schedule_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/schedule_invariance.py's figures: each model on the same held-out states."""
    rows: list[dict[str, Any]] = []
    for states, block in figures.get("same_states", {}).items():
        for model, f in block["models"].items():
            rows.append({
                "held-out states recorded": states,
                "model trained on": model,
                "n": f["n"],
                "mean risk 28": f["mean_risk_28"],
                "mean difference to weekly": f"{f['mean_difference_28']:+.3f}",
                "p90 abs difference (<= 0.03)": f["abs_difference_28_p90"],
                "largest 1-day rise (<= 0.10)": f["max_daily_rise"],
            })
    for sched, f in figures.get("recorded_outcome", {}).get("schedules", {}).items():
        rows.append({
            "held-out states recorded": "recorded outcome, model-free",
            "model trained on": sched,
            "mean risk 28": f"Turnbull 14/28/56 d {f['turnbull_risk_14']:.3f} / "
                            f"{f['turnbull_risk_28']:.3f} / {f['turnbull_risk_56']:.3f}",
            "mean difference to weekly": f"recorded before latent waning "
                                         f"{f['recorded_before_latent_waning']:.2f}",
        })
    return rows


# --------------------------------------------------------------------------- section 3


def free_port() -> int:
    """Ask the kernel for a free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _json_records(frame: Any, drop: tuple[str, ...] = ("patient_id",)) -> list[dict[str, Any]]:
    """Turn canonical rows into JSON API items (dates as text, blanks omitted)."""
    import pandas as pd

    from forecast.contract import TABLES

    kinds: dict[str, str] = {}
    for cols in TABLES.values():
        kinds.update({c.name: c.kind for c in cols})
    out = []
    for rec in frame.to_dict("records"):
        item: dict[str, Any] = {}
        for key, value in rec.items():
            if key in drop or key not in kinds or value is None:
                continue
            if isinstance(value, float) and math.isnan(value):
                continue
            kind = kinds[key]
            if kind == "date":
                item[key] = pd.Timestamp(value).strftime("%Y-%m-%d")
            elif kind == "int":
                item[key] = int(value)
            elif kind == "bool":
                item[key] = bool(value)
            elif kind == "float":
                item[key] = float(value)
            else:
                item[key] = value
        out.append(item)
    return out


def patient_payload(cohort: Any, patient_id: str) -> dict[str, Any]:
    """The stateless forecast body (POST /api/v1/forecast) for one patient of a cohort."""
    pat = cohort.patients[cohort.patients["patient_id"] == patient_id]
    ses = cohort.sessions[cohort.sessions["patient_id"] == patient_id]
    ass = cohort.assessments[cohort.assessments["patient_id"] == patient_id]
    patient = _json_records(pat, drop=())[0]
    last = max(ses["date"].max(), ass["date"].max())
    return {
        "patient": patient,
        "sessions": _json_records(ses),
        "assessments": _json_records(ass),
        "as_of": last.strftime("%Y-%m-%d"),
    }


class Server:
    """The production server (gunicorn) on a free loopback port, with its own store."""

    def __init__(self, workdir: Path, models: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "gunicorn.log"

    def start(self, timeout: float = 90.0) -> None:
        """Start gunicorn and wait until /api/v1/health answers 200."""
        gunicorn = Path(sys.executable).with_name("gunicorn")
        cmd = [
            str(gunicorn),
            "--workers",
            str(WORKERS),
            # The deployment of service/app.py's docstring and docs/service.md: threaded workers.
            "--worker-class",
            "gthread",
            "--threads",
            str(THREADS),
            "--timeout",
            "30",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--access-logfile",
            "-" if os.environ.get("KAP_BENCH_ACCESS_LOG") else "/dev/null",
            "--log-level",
            "warning",
            "service.app:create_app()",
        ]
        conf = ROOT / "gunicorn.conf.py"
        if conf.exists():
            # The deployment's own settings (worker class, timeouts), with our bind/workers.
            cmd[1:1] = ["--config", str(conf)]
        with self.log.open("wb") as fh:
            # Own session: the whole server process group can be stopped by its id.
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.base + "/api/v1/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"gunicorn did not become healthy: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 15 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def wait_idle(self, timeout: float = 60.0) -> float:
        """Wait until the server has drained earlier load; return the seconds waited.

        A load run ends with requests still queued in the server; the next scenario must
        not be measured behind them. Idle = three health checks in a row under 50 ms.
        """
        started = time.monotonic()
        fast = 0
        while time.monotonic() - started < timeout and fast < 3:
            t0 = time.perf_counter()
            try:
                status, _ = self.call("GET", "/api/v1/health")
            except OSError:
                status = 0
            fast = fast + 1 if status == 200 and time.perf_counter() - t0 < 0.05 else 0
            time.sleep(0.05)
        return round(time.monotonic() - started, 1)

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last warnings and errors of the server's log (the access lines are left out)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        keep = [
            line
            for line in text.splitlines()
            if '"level": "info"' not in line and '"level": "debug"' not in line
        ]
        return keep[-lines:]

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes (children of the master)."""
        if self.proc is None:
            return []
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """One request (setup and sanity checks), JSON in and out."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw[:500].decode(errors="replace")


@contextmanager
def production_server(
    workdir: Path, database_url: str | None = None
) -> Iterator[tuple[Server, str, Any]]:
    """Simulate, train, create a token and start gunicorn; yield (server, token, cohort).

    The store is a SQLite file in ``workdir`` unless ``database_url`` names another
    (already migrated) database. The server accepts the benchmark's CDS Hooks client.
    """
    from forecast.simulation import simulate, write_simulation

    cohort_dir = workdir / "cohort"
    models = workdir / "models"
    sim = simulate(HTTP_COHORT_PATIENTS, HTTP_COHORT_SEED)
    write_simulation(sim, cohort_dir)
    clients = workdir / "cds-clients.json"
    clients.write_text(
        json.dumps({"clients": [{"iss": CDS_ISS, "secret": CDS_SECRET, "algorithms": ["HS256"]}]})
    )
    clients.chmod(0o600)
    env = dict(os.environ)
    env.update(
        FORECAST_MODELS=str(models),
        FORECAST_DATABASE_URL=database_url or f"sqlite:///{workdir / 'store.sqlite'}",
        FORECAST_INSTANCE_PATH=str(workdir / "instance"),
        FORECAST_CDS_CLIENTS=str(clients),
        FORECAST_CDS_ALLOW_HS256="1",
        FORECAST_CDS_AUDIENCE=CDS_AUDIENCE,
    )
    forecast_cli = str(Path(sys.executable).with_name("forecast"))
    _run([forecast_cli, "train", str(cohort_dir), "--models", str(models)], timeout=900, env=env)
    token = (
        _run(
            [forecast_cli, "tokens", "create", "--role", "clinician", "--name", "bench"],
            timeout=120,
            env=env,
        )
        .strip()
        .splitlines()[-1]
        .strip()
    )
    server = Server(workdir, models, env)
    try:
        server.start()
        yield server, token, sim.cohort
    finally:
        server.stop()


def _pick_patients(server: Server, token: str, cohort: Any, want: int) -> list[dict[str, Any]]:
    """Stateless bodies of patients whose forecast runs the model (routine or session_due).

    Patients answered with an early status (no_treatment, not_in_response, ...) would
    measure a shortcut, not the model; the benchmark uses the full path.
    """
    chosen: list[dict[str, Any]] = []
    for pid in cohort.patients["patient_id"]:
        body = patient_payload(cohort, pid)
        status, answer = server.call("POST", "/api/v1/forecast", token, body)
        if status != 200:
            raise RuntimeError(f"POST /api/v1/forecast answered {status}: {str(answer)[:500]}")
        if answer.get("status") in ("routine", "session_due"):
            chosen.append(body)
            if len(chosen) >= want:
                break
    if not chosen:
        raise RuntimeError("no simulated patient got a model-based forecast")
    return chosen


def _store_patient(server: Server, token: str, body: dict[str, Any]) -> str:
    pid = body["patient"]["patient_id"]
    covariates = {k: v for k, v in body["patient"].items() if k != "patient_id"}
    for method, path, payload in (
        ("PUT", f"/api/v1/patients/{pid}", covariates),
        ("POST", f"/api/v1/patients/{pid}/sessions", {"sessions": body["sessions"]}),
        ("POST", f"/api/v1/patients/{pid}/assessments", {"assessments": body["assessments"]}),
    ):
        status, answer = server.call(method, path, token, payload)
        if status not in (200, 201):
            raise RuntimeError(f"{method} {path} answered {status}: {str(answer)[:500]}")
    return pid


def _check(server: Server, token: str, method: str, path: str, body: Any = None) -> Any:
    """One request that must answer 200 before its endpoint is loaded."""
    status, answer = server.call(method, path, token, body)
    if status != 200:
        raise RuntimeError(f"{method} {path} answered {status}: {str(answer)[:500]}")
    return answer


def _start_profiler(server: Server, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample the server's workers with py-spy (if installed) while a scenario runs."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() or server.proc is None:
        return None
    cmd = [
        spy,
        "record",
        "--pid",
        str(server.proc.pid),
        "--subprocesses",
        "--format",
        "raw",
        "--rate",
        "200",
        "--duration",
        str(max(1, int(seconds))),
        "--nonblocking",
        # Only samples holding the GIL: where the CPU goes. Without it, the threads of a
        # worker waiting for the GIL show up in whatever numpy call released it.
        "--gil",
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """Where the sampled time goes: self time per function and inclusive time per project
    function (``forecast/`` and ``service/``), as shares of all samples."""
    import re

    frame_re = re.compile(r"^(?P<fn>.*) \((?P<file>[^():]+)(?::\d+)?\)$")

    def name(frame: str) -> str:
        m = frame_re.match(frame.strip())
        if not m:
            return frame.strip()
        path = m.group("file")
        for root in ("/forecast/", "/service/", "site-packages/"):
            if root in path:
                path = path[path.index(root) + (len(root) if root == "site-packages/" else 1) :]
                break
        return f"{m.group('fn')} ({path})"

    total = 0
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if "(" in f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        leaf = name(frames[-1])
        self_time[leaf] = self_time.get(leaf, 0) + count
        for f in {name(f) for f in frames}:
            if "(forecast/" in f or "(service/" in f:
                inclusive[f] = inclusive.get(f, 0) + count

    def ranked(d: dict[str, int]) -> list[tuple[str, float]]:
        items = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [(k, round(v / total, 3)) for k, v in items]

    return {"samples": total, "self": ranked(self_time), "inclusive_project": ranked(inclusive)}


@dataclass
class Scenario:
    """One endpoint loaded at ``connections``: what is sent and which target applies."""

    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    patients: int = 1
    #: Least share of the bare endpoint's req/s (None: no target); p99 target or None.
    share_target: float | None = None
    p99_target: float | None = None
    #: A header sent with the next of these values on each request (single-use tokens),
    #: or a function making them just before the scenario runs (tokens expire).
    rotate: tuple[str, list[str]] | Callable[[], tuple[str, list[str]]] | None = None


def _cds_scenario(pid: str, duration: float) -> Scenario:
    """CDS Hooks patient-view of a stored patient; every request its own JWT (jti replay)."""
    from bench.store_scale import cds_tokens

    body = {
        "hook": "patient-view",
        "hookInstance": "5b0b5a4e-bench-4c7e-9a43-cd5hooks0001",
        "context": {"userId": "Practitioner/bench", "patientId": pid},
    }

    def tokens() -> tuple[str, list[str]]:
        # Enough single-use tokens for the warm-up and the run, well above the bare rate.
        made = cds_tokens(int(3000 * (duration + 2)), CDS_SECRET, CDS_ISS, CDS_AUDIENCE)
        return "Authorization", [f"Bearer {t}" for t in made]

    return Scenario(
        "CDS patient-view", "POST", CDS_PATH, {}, body, share_target=TARGET_CDS_SHARE,
        rotate=tokens,
    )


def _load_rows(
    server: Server,
    scenarios: list[Scenario],
    *,
    duration: float,
    connections: int,
    driver: str,
    profile_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Load each scenario after a warm-up and an idle server; optionally profile it after.

    The profile (py-spy on the workers) is a separate run after the measured one, so it
    does not slow the figures down.
    """
    rows = []
    for sc in scenarios:
        raw = None if sc.body is None else json.dumps(sc.body).encode()
        kwargs: dict[str, Any] = {
            "driver": driver, "method": sc.method, "headers": sc.headers, "body": raw,
            "connections": connections,
        }
        if sc.rotate is not None:
            name, values = sc.rotate() if callable(sc.rotate) else sc.rotate
            # Warm-up and run must not reuse a token: split the values between them.
            part = len(values) // 8
            warm = {**kwargs, "rotate": (name, values[:part])}
            kwargs["rotate"] = (name, values[part:])
        else:
            warm = kwargs
        http_load.run_load(server.base + sc.path, duration=1.0, **warm)
        waited = server.wait_idle()
        res = http_load.run_load(server.base + sc.path, duration=duration, **kwargs)
        row = {"name": sc.name, "patients_per_request": sc.patients, **res.as_dict()}
        row["idle_wait_s"] = waited
        row["patients_per_s"] = round(res.rps * sc.patients, 1)
        row["share_target"] = sc.share_target
        row["p99_target"] = sc.p99_target
        print(
            f"[bench]   {sc.name}: {res.rps:.0f} req/s, p99 {res.p99_ms} ms, errors {res.errors}",
            file=sys.stderr,
            flush=True,
        )
        server.wait_idle()
        if profile_dir is not None and sc.share_target is not None and sc.rotate is None:
            row["profile"] = _profile_run(server, sc, kwargs, duration, profile_dir)
            server.wait_idle()
        rows.append(row)
    return rows


def _profile_run(
    server: Server, sc: Scenario, kwargs: dict[str, Any], duration: float, out_dir: Path
) -> dict[str, Any] | None:
    """Sample the workers with py-spy while the scenario runs again (not measured)."""
    out = out_dir / f"py-spy-{len(list(out_dir.glob('py-spy-*')))}.txt"
    seconds = max(2.0, duration / 2)
    spy = _start_profiler(server, seconds, out)
    if spy is None:
        return None
    http_load.run_load(server.base + sc.path, duration=seconds + 0.5, **kwargs)
    spy.wait(timeout=seconds + 60)
    return summarise_profile(out.read_text(errors="replace")) if out.exists() else None


def _judge(rows: list[dict[str, Any]]) -> None:
    """Shares of the bare endpoint (the better of its runs) and the targets met."""
    bare_rps = max(r["rps"] for r in rows if r["name"].startswith("health"))
    for row in rows:
        row["share_of_bare"] = round(row["rps"] / bare_rps, 3) if bare_rps else None
        if row.get("share_target") is not None:
            row["meets_throughput"] = bool((row["share_of_bare"] or 0) >= row["share_target"])
        if row.get("p99_target") is not None:
            row["meets_p99"] = bool(row["p99_ms"] is not None and row["p99_ms"] < row["p99_target"])


def _server_ms(server: Server, token: str, method: str, path: str, body: Any, n: int) -> dict:
    """One client, ``n`` calls: median and best milliseconds (loopback: ~ server time)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        _check(server, token, method, path, body)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"n": n, "median_ms": round(times[len(times) // 2], 1), "best_ms": round(times[0], 1)}


def bench_http(
    duration: float, connections: int, driver: str, profile: bool = False
) -> dict[str, Any]:
    """Load the production server's forecast endpoints beside its bare health endpoint.

    Every forecast scenario runs the model (patients whose status is routine or
    session_due) and writes its audit row, as in production.
    """
    with tempfile.TemporaryDirectory(prefix="kap-bench-http-") as tmp:
        workdir = Path(tmp)
        with production_server(workdir) as (server, token, cohort):
            bodies = _pick_patients(server, token, cohort, BATCH_SIZE)
            stored = [_store_patient(server, token, b) for b in bodies]
            as_of = bodies[0]["as_of"]
            auth = {"Authorization": f"Bearer {token}"}
            one = f"/api/v1/patients/{stored[0]}/forecast?as_of={as_of}"
            histories = {"histories": bodies}
            by_id = {
                "patients": [
                    {"patient_id": p, "as_of": b["as_of"]}
                    for p, b in zip(stored, bodies, strict=True)
                ]
            }
            _check(server, token, "GET", one)
            _check(server, token, "POST", "/api/v1/forecast/batch", histories)
            _check(server, token, "POST", "/api/v1/forecast/batch", by_id)
            n = len(bodies)
            ok, p99 = TARGET_THROUGHPUT_SHARE, TARGET_P99_MS
            scenarios = [
                Scenario("health (bare, no auth)", "GET", "/api/v1/health", {}),
                Scenario("model card (auth, no model run)", "GET", "/api/v1/model", auth),
                Scenario("stored-patient forecast", "GET", one, auth, None, 1, ok, p99),
                Scenario("stateless forecast", "POST", "/api/v1/forecast", auth, bodies[0], 1,
                         ok, p99),
                _cds_scenario(stored[0], duration),
                Scenario(f"batch, {n} histories", "POST", "/api/v1/forecast/batch", auth,
                         histories, n),
                Scenario(f"batch, {n} stored", "POST", "/api/v1/forecast/batch", auth, by_id, n),
                Scenario("health (bare, again)", "GET", "/api/v1/health", {}),
            ]
            rows = _load_rows(
                server, scenarios, duration=duration, connections=connections, driver=driver,
                profile_dir=workdir if profile else None,
            )
            workers = server.worker_pids()
            log_tail = server.log_tail()
    _judge(rows)
    return {
        "server": f"gunicorn, {WORKERS} workers x {THREADS} threads (gthread), 127.0.0.1, "
        "SQLite store",
        "workers": WORKERS,
        "worker_pids_seen": len(workers),
        "connections": connections,
        "duration_s": duration,
        "bare_endpoint": "GET /api/v1/health (no auth; pings the database; same server)",
        "cohort": {"patients": HTTP_COHORT_PATIENTS, "seed": HTTP_COHORT_SEED},
        "batch_size": BATCH_SIZE,
        "rows": rows,
        "server_log_tail": log_tail,
    }


# --------------------------------------------------------------------------- store scale


@contextmanager
def _store_database(backend: str, workdir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """An empty database of ``backend``: (URL for the server, engine options for seeding)."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'store.sqlite'}", {}
        return
    import secrets

    import sqlalchemy as sa

    schema = f"kap_bench_{secrets.token_hex(4)}"
    engine = sa.create_engine(STORE_PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        sep = "&" if "?" in STORE_PG_URL else "?"
        yield (
            f"{STORE_PG_URL}{sep}options=-csearch_path%3D{schema}",
            {"connect_args": {"options": f"-csearch_path={schema}"}},
        )
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def _seed(url: str, options: dict[str, Any], quick: bool) -> dict[str, Any]:
    from bench.store_scale import seed_store
    from service.store import Store

    scale = 5 if quick else 1
    store = Store(url.split("?")[0] if options else url, **options)
    try:
        store.migrate()
        return seed_store(
            store, STORE_PATIENTS // scale, STORE_ASSESSMENTS // scale, STORE_AUDIT_ROWS // scale
        )
    finally:
        store.dispose()


def _risk_assessment_read(server: Server, token: str, pid: str) -> dict[str, Any]:
    """Time ``GET /fhir/r4/RiskAssessment/{id}`` (found by the audited inputs hash)."""
    found = _check(server, token, "GET", f"/fhir/r4/RiskAssessment?subject=Patient/{pid}")
    rid = found["entry"][0]["resource"]["id"]
    return _server_ms(server, token, "GET", f"/fhir/r4/RiskAssessment/{rid}", None, 20)


def _store_backend(
    backend: str, duration: float, connections: int, driver: str, profile: bool, quick: bool
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"kap-bench-store-{backend}-") as tmp:
        workdir = Path(tmp)
        with _store_database(backend, workdir) as (url, options):
            started = time.perf_counter()
            seeded = _seed(url, options, quick)
            print(f"[bench]   {backend}: seeded {seeded['rows']} in "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            with production_server(workdir, url) as (server, token, cohort):
                bodies = _pick_patients(server, token, cohort, BATCH_SIZE)
                stored = [_store_patient(server, token, b) for b in bodies]
                auth = {"Authorization": f"Bearer {token}"}
                one = f"/api/v1/patients/{stored[0]}/forecast?as_of={bodies[0]['as_of']}"
                _check(server, token, "GET", one)
                rows = _load_rows(
                    server,
                    [
                        Scenario("health (bare, no auth)", "GET", "/api/v1/health", {}),
                        Scenario("stored-patient forecast", "GET", one, auth, None, 1,
                                 TARGET_THROUGHPUT_SHARE, TARGET_P99_MS),
                        Scenario("health (bare, again)", "GET", "/api/v1/health", {}),
                    ],
                    duration=duration, connections=connections, driver=driver,
                    profile_dir=workdir if profile else None,
                )
                batch = {"as_of": "2026-10-01",
                         "patients": [{"patient_id": p} for p in seeded["patient_ids"][:1000]]}
                batch_ms = _server_ms(server, token, "POST", "/api/v1/forecast/batch", batch, 5)
                read_ms = _risk_assessment_read(server, token, stored[0])
    _judge(rows)
    return {
        "backend": backend,
        "rows_in_store": seeded["rows"],
        "seed_s": {"simulate": seeded["simulate_s"], "write": seeded["write_s"]},
        "rows": rows,
        "batch_1000_stored": {**batch_ms,
                              "meets": bool(batch_ms["median_ms"] < TARGET_BATCH_1000_MS)},
        "risk_assessment_read": read_ms,
    }


def bench_store(
    duration: float, connections: int, driver: str, profile: bool, quick: bool
) -> dict[str, Any]:
    """Stored forecasts against a store at clinic scale, on SQLite and PostgreSQL.

    The store is bulk-seeded (bench/store_scale.py) with 100,000 patients, 3 million
    assessments and a million audit rows (a fifth with ``--quick``), then the benchmark's
    own patients are stored through the API and loaded as in the ``http`` section.
    """
    out: dict[str, Any] = {"backends": {}, "connections": connections, "duration_s": duration}
    for backend in ("sqlite", "postgresql"):
        try:
            out["backends"][backend] = _store_backend(
                backend, duration, connections, driver, profile, quick
            )
        except Exception as exc:  # noqa: BLE001 - recorded; the other backend still runs
            out["backends"][backend] = {"error": f"{type(exc).__name__}: {exc}"}
    if all("error" in b for b in out["backends"].values()):
        raise RuntimeError("; ".join(b["error"] for b in out["backends"].values()))
    return out


# --------------------------------------------------------------------------- predict


def bench_predict(quick: bool) -> dict[str, Any]:
    """``forecast predict`` on a simulated clinic of 100,000 patients (20,000 with --quick)."""
    n = PREDICT_PATIENTS // 5 if quick else PREDICT_PATIENTS
    forecast_cli = str(Path(sys.executable).with_name("forecast"))
    with tempfile.TemporaryDirectory(prefix="kap-bench-predict-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "FORECAST_MODELS": str(work / "models")}
        _run([forecast_cli, "simulate", "--patients", str(HTTP_COHORT_PATIENTS), "--seed",
              str(HTTP_COHORT_SEED), "--out", str(work / "train")], timeout=600, env=env)
        _run([forecast_cli, "train", str(work / "train")], timeout=900, env=env)
        _run([forecast_cli, "simulate", "--patients", str(n), "--seed", "7", "--out",
              str(work / "clinic")], timeout=900, env=env)
        started = time.perf_counter()
        _run([forecast_cli, "predict", str(work / "clinic"), "--as-of", "2026-10-01", "--out",
              str(work / "preds.csv")], timeout=1800, env=env)
        wall = time.perf_counter() - started
        # The library path without JSON answers (forecast.policy.forecast_table), same rows.
        started = time.perf_counter()
        _run([sys.executable, "-c", _TABLE_SCRIPT, str(work / "clinic"), str(work / "t.csv")],
             timeout=1800, env={**env, "PYTHONPATH": str(ROOT)})
        table_wall = time.perf_counter() - started
        same = (work / "preds.csv").read_bytes() == (work / "t.csv").read_bytes()
    return {
        "patients": n,
        "wall_s": round(wall, 1),
        "command": f"forecast predict CLINIC --as-of 2026-10-01 --out preds.csv ({n:,} patients)",
        "meets": bool(n == PREDICT_PATIENTS and wall < TARGET_PREDICT_100K_S),
        "forecast_table_wall_s": round(table_wall, 1),
        "forecast_table_same_csv": same,
    }


#: ``forecast predict``'s steps with forecast_table instead of answers (bench_predict).
_TABLE_SCRIPT = """
import sys
import pandas as pd
from forecast import registry
from forecast.data import load_cohort
from forecast.policy import forecast_table
model = registry.load("latest", registry.models_dir(None))
cohort = load_cohort(sys.argv[1], covariates=model.covariates)
ids = cohort.patients["patient_id"].astype(str).to_numpy()
parts = [forecast_table(cohort.subset(ids[i:i + 20000]), model, pd.Timestamp("2026-10-01"))
         for i in range(0, len(ids), 20000)]
pd.concat(parts, ignore_index=True).to_csv(sys.argv[2], index=False)
"""


# --------------------------------------------------------------------------- report


def print_table(results: dict[str, Any]) -> None:
    """Print the results as plain-text tables (the docs page holds the same figures)."""
    m = results["machine"]
    print(f"\nkap-forecast benchmark, {results['date']}")
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"load before {m['loadavg_1_5_15']}, after {results.get('loadavg_after')}"
    )
    sec = results["sections"]
    bundle = sec.get("bundle")
    if bundle is not None:
        print("\n1. Serving bundle vs lifelines predict_survival_function")
        if "error" in bundle:
            print(f"   FAILED: {bundle['error']}")
        else:
            for row in bundle.get("summary", []):
                print(f"   {row}")
    train = sec.get("train")
    if train is not None:
        print("\n2. Training pipeline (wall time, peak memory per stage)")
        if "error" in train:
            print(f"   FAILED: {train['error']}")
        else:
            for row in train.get("summary", []):
                print(f"   {row}")
    http = sec.get("http")
    if http is not None:
        print(f"\n3. HTTP, gunicorn {WORKERS} workers, {http.get('connections', '?')} connections")
        if "error" in http:
            print(f"   FAILED: {http['error']}")
        else:
            head = (
                f"   {'endpoint':34} {'req/s':>9} {'pat/s':>9} {'p50 ms':>8} "
                f"{'p99 ms':>8} {'errors':>6} {'share':>6}  targets"
            )
            print(head)
            for r in http["rows"]:
                print(
                    f"   {r['name']:34} {_fmt(r['rps']):>9} {_fmt(r['patients_per_s']):>9} "
                    f"{_fmt(r['p50_ms'], 2):>8} {_fmt(r['p99_ms'], 2):>8} {r['errors']:>6} "
                    f"{_fmt(r['share_of_bare'], 2):>6}  {_targets_cell(r)}"
                )
            print(f"   driver: {http['rows'][0]['driver']}; bare endpoint: {http['bare_endpoint']}")
    for line in _store_lines(sec.get("store")) + _predict_lines(sec.get("predict")):
        print(line)
    service = sec.get("service")
    if service is not None:
        print("\nService latency, one client (bench/service_latency.py)")
        if "error" in service:
            print(f"   FAILED: {service['error']}")
        else:
            for row in service.get("summary", []):
                print(f"   {row}")


def _targets_cell(r: dict[str, Any]) -> str:
    """A row's targets: share of the bare endpoint and p99, met or missed."""
    parts = []
    if r.get("share_target") is not None:
        verdict = "met" if r.get("meets_throughput") else "**missed**"
        parts.append(f">= {r['share_target']} share {verdict}")
    if r.get("p99_target") is not None:
        verdict = "met" if r.get("meets_p99") else "**missed**"
        parts.append(f"p99 < {r['p99_target']:.0f} ms {verdict}")
    return ", ".join(parts)


def _store_lines(store: dict[str, Any] | None) -> list[str]:
    """The store section as plain-text lines (also used for the page, as a table)."""
    if store is None:
        return []
    lines = ["\nStore at scale (stored forecasts, bulk-seeded store)"]
    if "error" in store:
        return [*lines, f"   FAILED: {store['error']}"]
    for backend, b in store.get("backends", {}).items():
        if "error" in b:
            lines.append(f"   {backend}: FAILED: {b['error']}")
            continue
        lines.append(f"   {backend}: {b['rows_in_store']}")
        for r in b["rows"]:
            lines.append(
                f"     {r['name']:28} {_fmt(r['rps']):>9} req/s  p99 {_fmt(r['p99_ms'], 2):>8} ms "
                f"share {_fmt(r['share_of_bare'], 2):>5}  {_targets_cell(r)}"
            )
        bt = b["batch_1000_stored"]
        lines.append(f"     batch of 1,000 stored: median {bt['median_ms']} ms "
                     f"(target < {TARGET_BATCH_1000_MS:.0f} ms: "
                     f"{'met' if bt['meets'] else 'missed'})")
        read = b["risk_assessment_read"]["median_ms"]
        lines.append(f"     RiskAssessment read by id: median {read} ms")
    return lines


def _predict_lines(pred: dict[str, Any] | None) -> list[str]:
    if pred is None:
        return []
    if "error" in pred:
        return ["\nforecast predict", f"   FAILED: {pred['error']}"]
    return ["\nforecast predict", f"   {pred['command']}: {pred['wall_s']} s "
            f"(target < {TARGET_PREDICT_100K_S:.0f} s on 100,000: "
            f"{'met' if pred['meets'] else 'missed'})",
            f"   the same steps with forecast_table: {pred.get('forecast_table_wall_s')} s "
            f"(same CSV: {pred.get('forecast_table_same_csv')})"]


def bundle_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/bundle_vs_lifelines.py's figures as one row per patients x path."""
    out = []
    for r in figures.get("rows", []):
        for path, key in (("model only", "model"), ("end to end", "end_to_end")):
            tb, tl = r[f"bundle_{key}_s"], r[f"lifelines_{key}_s"]
            out.append(
                {
                    **({"family": r["family"]} if "family" in r else {}),
                    "patients": f"{r['patients']:,}",
                    "path": path,
                    "bundle ms": round(1e3 * tb, 3),
                    "lifelines ms": round(1e3 * tl, 3),
                    "speedup": f"{tl / tb:,.0f}x",
                    "target >= 100x": "met" if tl / tb >= TARGET_BUNDLE_SPEEDUP else "missed",
                }
            )
    return out


def train_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/train_scale.py's figures as one row per cohort size x stage."""
    out = []
    for run in figures.get("runs", []):
        for st in run.get("stages", []):
            out.append(
                {
                    "patients": f"{run['patients']:,}",
                    "stage": st["stage"],
                    "wall s": "failed" if "error" in st else round(st["wall_s"], 1),
                    "peak RSS MB": None if "error" in st else round(st["peak_rss_mb"]),
                }
            )
        out.append(
            {
                "patients": f"{run['patients']:,}",
                "stage": "training = load+episodes+features+fit",
                "wall s": round(run["train_s"], 1),
                "peak RSS MB": round(run["peak_rss_mb"]),
            }
        )
    return out


def service_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/service_latency.py's one-client figures (HTTP and in-process CPU) as rows."""
    out: list[dict[str, Any]] = []
    for name, v in figures.items():
        if isinstance(v, dict) and "p50_ms" in v:
            out.append(
                {
                    "measurement": f"HTTP, one client: {name}",
                    "n": v.get("n"),
                    "p50 ms": v["p50_ms"],
                    "p95 ms": v.get("p95_ms"),
                }
            )
    cpu = figures.get("inprocess", {}).get("cpu_ms_per_call", {})
    for name, ms in cpu.items():
        out.append(
            {
                "measurement": f"in process, CPU per call: {name}",
                "n": None,
                "p50 ms": ms,
                "p95 ms": None,
            }
        )
    return out


def _md_rows(data: Any) -> list[dict[str, Any]]:
    """Find the list of row dicts in another script's JSON (``rows``, ``results``, a list)."""
    if isinstance(data, list) and all(isinstance(x, dict) for x in data):
        return data
    if isinstance(data, dict):
        for key in ("rows", "results", "stages", "runs"):
            if isinstance(data.get(key), list):
                return _md_rows(data[key])
        nested = {k: v for k, v in data.items() if isinstance(v, dict)}
        if nested:
            return [{"measurement": k, **v} for k, v in nested.items()]
        return [data] if all(not isinstance(v, dict | list) for v in data.values()) else []
    return []


def _fmt_md(x: Any) -> str:
    """A cell: floats with at most 3 decimals and no trailing zeros."""
    if isinstance(x, float) and not math.isnan(x):
        return f"{x:,.3f}".rstrip("0").rstrip(".")
    return _fmt(x)


def _md_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    cols: list[str] = []
    for r in rows:
        cols += [k for k, v in r.items() if k not in cols and not isinstance(v, dict | list)]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt_md(r.get(c)) for c in cols) + " |")
    return out


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of the benchmark, read from the measured figures."""
    sec = results["sections"]
    out: list[dict[str, Any]] = []
    bundle = sec.get("bundle")
    if bundle is not None and "error" not in bundle:
        for r in bundle_rows(bundle.get("figures", {})):
            if r["path"] != "model only":
                continue
            fam = f"{r['family']}, " if "family" in r else ""
            out.append(
                {
                    "target": f"bundle >= {TARGET_BUNDLE_SPEEDUP:.0f}x faster than lifelines, "
                    f"{r['patients']} patient(s), model only",
                    "measured": f"{fam}{r['speedup']}",
                    "met?": r["target >= 100x"],
                }
            )
    train = sec.get("train")
    if train is not None and "error" not in train:
        figures = train.get("figures", {})
        limits = figures.get("targets", {})
        for run in figures.get("runs", []):
            n = f"{run['patients']:,}"
            if run.get("meets_time") is not None:
                out.append(
                    {
                        "target": f"training on {n} patients <= "
                        f"{float(limits.get('train_s_100k', 'nan')):g} s",
                        "measured": f"{run['train_s']:.1f} s",
                        "met?": "met" if run["meets_time"] else "missed",
                    }
                )
            if run.get("meets_memory") is not None and run["patients"] >= 100_000:
                out.append(
                    {
                        "target": f"peak memory training {n} patients <= "
                        f"{float(limits.get('peak_rss_mb', 'nan')):g} MB",
                        "measured": f"{run['peak_rss_mb']:.0f} MB",
                        "met?": "met" if run["meets_memory"] else "missed",
                    }
                )
    http = sec.get("http")
    if http is not None and "error" not in http:
        out += _row_targets(http["rows"], "", http.get("connections"))
    store = sec.get("store")
    if store is not None and "error" not in store:
        for backend, b in store.get("backends", {}).items():
            if "error" in b:
                out.append({"target": f"{backend} store at scale", "measured": "failed",
                            "met?": "missed"})
                continue
            out += _row_targets(b["rows"], f"{backend}, {b['rows_in_store']['patients']:,} "
                                f"patients / {b['rows_in_store']['assessments']:,} assessments: ",
                                store.get("connections"))
            bt = b["batch_1000_stored"]
            out.append({
                "target": f"{backend} store: batch of 1,000 stored patients < "
                f"{TARGET_BATCH_1000_MS:.0f} ms server time",
                "measured": f"{bt['median_ms']:.0f} ms (median of {bt['n']}, one client)",
                "met?": "met" if bt["meets"] else "missed",
            })
    pred = sec.get("predict")
    if pred is not None and "error" not in pred:
        out.append({
            "target": f"forecast predict on 100,000 patients < {TARGET_PREDICT_100K_S:.0f} s",
            "measured": f"{pred['wall_s']} s ({pred['patients']:,} patients; with "
            f"forecast_table {pred.get('forecast_table_wall_s')} s)",
            "met?": "met" if pred["meets"] else "missed",
        })
    return out


def _row_targets(rows: list[dict[str, Any]], prefix: str, connections: Any) -> list[dict]:
    """One target row per measured endpoint with a target (share of bare, p99)."""
    out = []
    for r in rows:
        if r.get("share_target") is not None:
            out.append({
                "target": f"{prefix}{r['name']} >= {r['share_target']} of the bare endpoint's "
                "req/s",
                "measured": f"{r['share_of_bare']:.3f} ({r['rps']:,.0f} req/s)",
                "met?": "met" if r.get("meets_throughput") else "missed",
            })
        if r.get("p99_target") is not None:
            out.append({
                "target": f"{prefix}{r['name']} p99 < {r['p99_target']:.0f} ms at "
                f"{connections or 16} connections",
                "measured": f"{_fmt(r['p99_ms'], 1)} ms",
                "met?": "met" if r.get("meets_p99") else "missed",
            })
    return out


def _md_load_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| endpoint | req/s | patients/s | p50 ms | p99 ms | errors | share of bare | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['name']} | {_fmt(r['rps'])} | {_fmt(r['patients_per_s'])} | "
            f"{_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} | {r['errors']} | "
            f"{_fmt(r['share_of_bare'], 3)} | {_targets_cell(r)} |"
        )
    return out


def _md_profiles(rows: list[dict[str, Any]]) -> list[str]:
    """py-spy summaries of the profiled endpoints: inclusive project share and leaf time."""
    out: list[str] = []
    for r in rows:
        prof = r.get("profile")
        if not prof or not prof.get("samples"):
            continue
        out += [
            f"py-spy, {r['name']} ({prof['samples']} samples of both workers, in a separate "
            "run after the measured one): where the time goes",
            "",
            *_md_table(
                [{"function (inclusive, project)": fn, "share": f"{share:.1%}"}
                 for fn, share in prof["inclusive_project"]]
            ),
            "",
            *_md_table(
                [{"leaf function (self time)": fn, "share": f"{share:.1%}"}
                 for fn, share in prof["self"][:10]]
            ),
            "",
        ]
    return out


def markdown_report(results: dict[str, Any]) -> str:
    """The results as Markdown: the generated part of the docs' Benchmarks page."""
    m = results["machine"]
    lines = [
        f"Measured {results['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{m['os']}, Python {m['python']}; load average (1/5/15 min) "
        f"{m['loadavg_1_5_15']} before, {results.get('loadavg_after')} after"
        + (" (`--quick`)." if results.get("quick") else "."),
        "",
    ]
    targets = target_rows(results)
    if targets:
        lines += ["### Targets", "", *_md_table(targets), ""]
    sec = results["sections"]
    for key, title in (
        ("bundle", "Serving bundle vs lifelines"),
        ("train", "Training pipeline"),
    ):
        _md_external(lines, sec, key, title)
    http = sec.get("http")
    if http is not None:
        lines += ["### HTTP", ""]
        if "error" in http:
            lines += [
                f"Not measured ({http.get('measured_at', '?')}): `{http['error'][:300]}`",
                "",
            ]
        else:
            lines.append(
                f"{http.get('server', '')}; {http.get('connections')} connections, "
                f"{http.get('duration_s')} s per endpoint; measured "
                f"{http.get('measured_at', '?')}, load average "
                f"{http.get('loadavg_before', '?')} before."
            )
            lines += ["", *_md_load_table(http["rows"])]
            lines += ["", f"Load generator: {http['rows'][0]['driver']}.", ""]
            lines += _md_profiles(http["rows"])
    store = sec.get("store")
    if store is not None:
        lines += ["### Store at scale (stored forecasts)", ""]
        if "error" in store:
            lines += [f"Not measured: `{store['error'][:300]}`", ""]
        for backend, b in store.get("backends", {}).items():
            if "error" in b:
                lines += [f"**{backend}**: not measured: `{b['error'][:300]}`", ""]
                continue
            counts = ", ".join(f"{k} {v:,}" for k, v in b["rows_in_store"].items())
            bt, read = b["batch_1000_stored"], b["risk_assessment_read"]
            lines += [
                f"**{backend}** (bulk-seeded: {counts}; measured {store.get('measured_at', '?')},"
                f" load average {store.get('loadavg_before', '?')} before):",
                "",
                *_md_load_table(b["rows"]),
                "",
                f"Batch of 1,000 stored patients (one client, {bt['n']} calls): median "
                f"{bt['median_ms']} ms, best {bt['best_ms']} ms. FHIR RiskAssessment read by "
                f"id: median {read['median_ms']} ms.",
                "",
                *_md_profiles(b["rows"]),
            ]
    pred = sec.get("predict")
    if pred is not None:
        lines += ["### forecast predict", ""]
        if "error" in pred:
            lines += [f"Not measured: `{pred['error'][:300]}`", ""]
        else:
            lines += [f"`{pred['command']}`: {pred['wall_s']} s wall (measured "
                      f"{pred.get('measured_at', '?')}, load average "
                      f"{pred.get('loadavg_before', '?')} before). The same steps (load, "
                      "validate, forecast, write the CSV) with "
                      f"`forecast.policy.forecast_table` instead of JSON answers: "
                      f"{pred.get('forecast_table_wall_s')} s (byte-identical CSV: "
                      f"{pred.get('forecast_table_same_csv')}).", ""]
    _md_external(lines, sec, "service", "Service latency, one client")
    _md_external(lines, sec, "care", "Forecasts at the point of care (bench/point_of_care.py)")
    _md_external(lines, sec, "schedules",
                 "Does the model describe waning or the schedule? (bench/schedule_invariance.py)")
    _md_external(lines, sec, "dask", "Training on Dask vs one machine (bench/dask_scale.py)")
    return "\n".join(lines) + "\n"


def write_results_page(results: dict[str, Any], path: Path = RESULTS_PAGE) -> Path:
    """Write the generated results page that docs/benchmarks.md includes."""
    text = (
        "<!-- Generated by `make bench` (bench/run.py) from bench/results.json. "
        "Do not edit; not committed. -->\n\n" + markdown_report(results)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _md_external(lines: list[str], sec: dict[str, Any], key: str, title: str) -> None:
    """Append one subprocess section (bundle, train, service) as Markdown to ``lines``."""
    part = sec.get(key)
    if part is None:
        return
    lines += [f"### {title}", ""]
    lines.append(
        f"Measured {part.get('measured_at', '?')}, load average "
        f"{part.get('loadavg_before', '?')} before."
    )
    lines.append("")
    if "error" in part:
        lines += [f"Not measured: `{part['error'][:300]}`", ""]
        return
    figures = part.get("figures")
    if key == "bundle":
        rows = bundle_rows(figures)
    elif key == "train":
        rows = train_rows(figures)
    elif key == "service":
        rows = service_rows(figures)
    elif key == "care":
        rows = care_rows(figures)
    elif key == "schedules":
        rows = schedule_rows(figures)
    elif key == "dask":
        rows = dask_rows(figures)
    else:
        rows = _md_rows(figures)
    table = _md_table(rows)
    lines += (table or ["```", *part.get("summary", []), "```"]) + [""]


def _summarise_external(section: dict[str, Any]) -> list[str]:
    """Turn another script's JSON into a few printable lines (their tables are in stdout)."""
    lines = []
    stdout = section.get("stdout", "")
    for line in stdout.strip().splitlines()[-30:]:
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections, write bench/results.json, print the table."""
    p = argparse.ArgumentParser(description="kap-forecast benchmarks (docs/benchmarks.md)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="skip the 100k-patient training run; 5 s per HTTP endpoint",
    )
    p.add_argument(
        "--only", choices=SECTIONS, action="append", help="run only this section (repeatable)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of load per HTTP endpoint (default 10, quick 5)",
    )
    p.add_argument("--connections", type=int, default=16, help="HTTP connections (default 16)")
    p.add_argument("--dask-million", action="store_true",
                   help="dask section: also train 1,000,000 patients on Dask (about 25 min)")
    p.add_argument(
        "--driver",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if installed (auto), or the Python one",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    p.add_argument(
        "--page",
        type=Path,
        default=RESULTS_PAGE,
        help="generated Markdown page (default docs/benchmarks-results.md)",
    )
    p.add_argument(
        "--page-only",
        action="store_true",
        help="measure nothing: rewrite the page from the results JSON (--out)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the sections of an existing results file that this run does not repeat",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after each forecast endpoint's measured run, sample the workers with py-spy "
        "during a second run (default; --no-profile skips it)",
    )
    args = p.parse_args(argv)
    if args.page_only:
        if not args.out.exists():
            print(f"{args.out} does not exist: run make bench first", file=sys.stderr)
            return 1
        print(f"written: {write_results_page(json.loads(args.out.read_text()), args.page)}")
        return 0
    duration = args.duration or (5.0 if args.quick else 10.0)
    selected = args.only or list(SECTIONS)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": machine_info(),
        "targets": {
            "bundle_speedup_min": TARGET_BUNDLE_SPEEDUP,
            "forecast_throughput_share_of_bare_min": TARGET_THROUGHPUT_SHARE,
            "p99_ms_max": TARGET_P99_MS,
        },
        "sections": {},
    }
    if args.merge and args.out.exists():
        results["sections"] = json.loads(args.out.read_text()).get("sections", {})
    OUT_DIR.mkdir(exist_ok=True)
    failed = False
    runners = {
        "bundle": lambda: bench_bundle(args.quick),
        "train": lambda: bench_train(args.quick),
        "http": lambda: bench_http(duration, args.connections, args.driver, args.profile),
        "store": lambda: bench_store(
            duration, args.connections, args.driver, args.profile, args.quick
        ),
        "predict": lambda: bench_predict(args.quick),
        "service": lambda: bench_service(args.quick),
        "care": lambda: bench_care(args.quick),
        "schedules": lambda: bench_schedules(args.quick),
        "dask": lambda: bench_dask(args.quick, args.dask_million),
    }
    for name in SECTIONS:
        if name not in selected:
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        measured_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        load_before = [round(x, 2) for x in os.getloadavg()]
        try:
            section = runners[name]()
            if name in ("bundle", "train", "service", "care", "schedules", "dask"):
                section["summary"] = _summarise_external(section)
        except Exception as exc:  # noqa: BLE001  (record the failure, run the other sections)
            failed = True
            section = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-3000:],
            }
        section["section_wall_s"] = round(time.perf_counter() - started, 1)
        section["measured_at"] = measured_at
        section["loadavg_before"] = load_before
        section["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        results["sections"][name] = section
        print(f"[bench] {name} done in {section['section_wall_s']} s", file=sys.stderr, flush=True)
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    page = write_results_page(results, args.page)
    print_table(results)
    print(f"\nwritten: {args.out}, {page}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
