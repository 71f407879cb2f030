"""Shared serving state and the one forecast path of every route.

Resources are attached to the app by :func:`init_app` (the store, the default
policy settings, the clinic's Questionnaires; the live model by
:func:`service.modelstate.init_app`) and kept in ``app.extensions``; the
accessors below read them for the current request. Blueprints import this
module, never each other.

Every forecast served goes through :func:`serve_forecasts`, which queues its
audit rows with the store's background audit writer; the response leaves
only after they are committed (:func:`_await_audit`), and if that write
fails, the client gets a 5xx problem, not a forecast. Every other access to patient data, and every
token or model change, is audited by :func:`audited` (a view decorator) or
:func:`audit_event`; writes are audited in their own transaction
(:func:`service.ingest.ingest_many`).

Tenancy: :func:`store` is the app's store scoped to the caller's clinic, so
every query a route makes sees that clinic's patients only.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from flask import Flask, Response, current_app, g, has_app_context, has_request_context, request

from forecast.cohort import Cohort
from forecast.contract import TABLES
from forecast.fhir import load_questionnaires
from forecast.policy import PolicySettings, forecast_queries
from service.config import ConfigError
from service.errors import ApiProblem
from service.logging import request_id
from service.modelstate import ModelState
from service.store import Store

log = logging.getLogger("service.serving")


# --------------------------------------------------------------------------- resources
def init_app(app: Flask) -> None:
    """Attach the store, the default policy settings and the Questionnaires to ``app``."""
    init_store(app)
    _init_settings(app)
    _init_questionnaires(app)
    app.after_request(_await_audit)


def init_store(app: Flask) -> Store:
    """Open the store named by the config, migrate it, keep it in ``app.extensions``."""
    store = Store(
        app.config["KAP_DATABASE_URL"],
        covariates=app.config.get("KAP_COVARIATES", ()),
        **app.config.get("KAP_ENGINE_OPTIONS", {}),
    )
    if app.config.get("KAP_MIGRATE", True):
        store.migrate()
    app.extensions["kap_store"] = store
    return store


def _init_settings(app: Flask) -> None:
    knobs: dict[str, Any] = {"threshold": float(app.config["KAP_THRESHOLD"])}
    if app.config.get("KAP_MIN_INTERVAL_DAYS") is not None:
        knobs["min_interval_days"] = int(app.config["KAP_MIN_INTERVAL_DAYS"])
    if app.config.get("KAP_MAX_INTERVAL_DAYS") is not None:
        knobs["max_interval_days"] = int(app.config["KAP_MAX_INTERVAL_DAYS"])
    # Validates the combination once at start (e.g. min > the policy's max).
    app.extensions["kap_settings"] = PolicySettings(**knobs)


def _init_questionnaires(app: Flask) -> None:
    """The clinic's Questionnaires (``FORECAST_QUESTIONNAIRES``), read once at start."""
    folder = app.config.get("KAP_QUESTIONNAIRES_DIR")
    forms: list[Any] = []
    if folder:
        if not Path(folder).is_dir():
            raise ConfigError(f"FORECAST_QUESTIONNAIRES={folder}: not a folder")
        try:
            forms = load_questionnaires(folder)
        except ValueError as exc:
            raise ConfigError(f"FORECAST_QUESTIONNAIRES: {exc}") from None
    app.extensions["kap_questionnaires"] = forms


def store() -> Store:
    """The app's store, scoped to the caller's clinic during a request.

    In a request, the store's patient queries see only the clinic of
    ``g.principal`` (none before authentication: a patient query then raises);
    outside a request, the app's store itself.
    """
    base: Store = current_app.extensions["kap_store"]
    if not has_request_context():
        return base
    principal = g.get("principal")
    clinic = None if principal is None else principal.clinic
    cached = g.get("_kap_scoped_store")
    if cached is None or cached[0] != clinic:
        cached = (clinic, base.scoped(clinic))
        g._kap_scoped_store = cached
    return cached[1]


def model_state() -> ModelState:
    """The app's live-model holder."""
    return current_app.extensions["kap_model"]


def settings() -> Any:
    """The default ``PolicySettings`` of this app."""
    return current_app.extensions["kap_settings"]


def questionnaires() -> list[Any]:
    """The clinic's Questionnaires (empty when none are configured)."""
    return current_app.extensions.get("kap_questionnaires", [])


def declared_covariates() -> tuple[str, ...]:
    """The declared covariates of the running app's store (none outside an app)."""
    if not has_app_context() or "kap_store" not in current_app.extensions:
        return ()
    return tuple(store().covariates)




# --------------------------------------------------------------------------- audit
F = TypeVar("F", bound=Callable[..., Any])


def outcome_of(status: int) -> str:
    """The audit outcome of an HTTP status."""
    if status < 400:
        return "ok"
    if status in (404, 410):
        return "not_found"
    if status >= 500:
        return "error"
    return "refused"


def _endpoint() -> str:
    return (request.endpoint or "")[:64] if has_request_context() else ""


def audit_event(
    action: str,
    patients: str | Iterable[str] | None = None,
    outcome: str = "ok",
    detail: str | None = None,
) -> None:
    """Audit ``action`` of the caller (one row per patient; committed on return).

    Without an authenticated caller nothing is recorded (no actor, no clinic:
    such a request never reaches patient data).
    """
    principal = g.get("principal") if has_request_context() else None
    if principal is None:
        return
    if patients is None or isinstance(patients, str):
        ids: list[str | None] = [patients]
    else:
        ids = list(dict.fromkeys(patients)) or [None]
    base: Store = current_app.extensions["kap_store"]
    base.add_audit(
        [
            {
                "clinic": principal.clinic,
                "token_name": principal.name[:128],
                "action": action,
                "patient_id": None if pid is None else str(pid)[:128],
                "outcome": outcome,
                "detail": detail,
                "request_id": request_id()[:64],
                "endpoint": _endpoint(),
            }
            for pid in ids
        ]
    )


def _await_audit(response: Response) -> Response:
    """Hold the response until the request's forecast audit rows are committed.

    :func:`serve_forecasts` queues its rows with the audit writer and returns
    at once, so the commit runs while the route builds its answer; the answer
    leaves only after the commit. If the commit failed, the client gets a 500
    problem instead of the forecast (an answer is never sent unaudited).
    """
    tickets = g.pop("kap_audit_tickets", None)
    if not tickets:
        return response
    try:
        for ticket in tickets:
            ticket.wait()
    except Exception:
        log.exception("audit write failed; the forecast was not delivered")
        return ApiProblem(
            500,
            "Audit write failed",
            "The forecast could not be recorded in the audit trail, so it is not delivered; "
            "try again.",
        ).response()
    return response


def audit_patient(pid: str) -> None:
    """Name the patient a view is about, for :func:`audited` (when not in the path)."""
    g.kap_audit_patient = pid


def audited(action: str, *, success: bool = True) -> Callable[[F], F]:
    """Audit every call of a view: the action, its patient and outcome.

    Put it below ``require_role`` (the caller is known). The patient is the
    path's ``patient_id`` or ``pid``, or what the view named by
    :func:`audit_patient`. With ``success=False`` only failed calls are
    recorded here (the view audits its successes itself, e.g. one forecast
    row per patient or the write's own rows). The row is committed before the
    answer leaves: if it cannot be written, the caller gets a 5xx, not data.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            g.pop("kap_audit_patient", None)

            def patient() -> str | None:
                return g.get("kap_audit_patient") or kwargs.get("patient_id") or kwargs.get("pid")

            try:
                rv = view(*args, **kwargs)
            except Exception as exc:
                status = getattr(exc, "status", None) or getattr(exc, "code", None) or 500
                audit_event(action, patient(), outcome_of(int(status)))
                raise
            status = getattr(rv, "status_code", None)
            if isinstance(rv, tuple) and len(rv) > 1 and isinstance(rv[1], int):
                status = rv[1]
            outcome = outcome_of(int(status or 200))
            if success or outcome != "ok":
                audit_event(action, patient(), outcome)
            return rv

        wrapped.kap_audit = action  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorate


def write_audit(action: str = "patient.write") -> dict[str, str] | None:
    """The ``audit`` argument of :func:`service.ingest.ingest_many` for this request."""
    principal = g.get("principal") if has_request_context() else None
    if principal is None:
        return None
    return {
        "actor": principal.name,
        "action": action,
        "endpoint": _endpoint(),
        "request_id": request_id()[:64],
    }


# --------------------------------------------------------------------------- audit hashes
def _lines(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Each row of ``frame`` as one CSV line (the canonical form hashed for the audit).

    Formats every cell as :func:`_lines_pandas` does (``DataFrame.to_csv`` with
    ``%.10g`` numbers, ``YYYY-MM-DD`` dates, empty blanks) and quotes them with
    the same ``csv`` writer, without the cost of ``to_csv`` (a millisecond per
    call, most of a one-patient hash); a test checks both agree.
    """
    n = len(frame)
    if not n:
        return np.array([], dtype=object)
    cells: list[list[str]] = []
    for name in columns:
        v = frame[name].to_numpy()
        if v.dtype.kind == "f":
            cells.append(["" if x != x else format(x, ".10g") for x in v.tolist()])
        elif v.dtype.kind == "M":
            text = np.datetime_as_string(v.astype("datetime64[D]"), unit="D").astype(object)
            text[np.isnat(v)] = ""
            cells.append(text.tolist())
        elif v.dtype == object:
            blank = pd.isna(v)
            cells.append(
                ["" if b else str(x) for x, b in zip(v.tolist(), blank.tolist(), strict=True)]
            )
        else:
            return _lines_pandas(frame, columns)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(zip(*cells, strict=True))
    return np.array(buf.getvalue().split("\n")[:-1], dtype=object)


def _lines_pandas(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """:func:`_lines` by ``DataFrame.to_csv``: the reference form, used for other column types."""
    if not len(frame):
        return np.array([], dtype=object)
    text = frame[list(columns)].to_csv(
        header=False,
        index=False,
        date_format="%Y-%m-%d",
        float_format="%.10g",
        na_rep="",
        lineterminator="\n",
    )
    return np.array(text.split("\n")[:-1], dtype=object)


def inputs_hashes(cohort: Cohort, queries: pd.DataFrame, model_version: str | None) -> list[str]:
    """sha256 of each query's canonical inputs (history up to as-of, as-of, threshold, model).

    The canonical form is the contract columns written as CSV lines (dates
    ``YYYY-MM-DD``, numbers ``%.10g``, blanks empty) in the cohort's order, so
    the same history gives the same hash whichever route delivered it.
    """
    tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name in ("patients", "sessions", "assessments"):
        frame: pd.DataFrame = getattr(cohort, name)
        cols = [c.name for c in TABLES[name]]
        pids = frame["patient_id"].to_numpy(dtype=object)
        if pd.api.types.infer_dtype(pids, skipna=False) not in ("string", "empty"):
            pids = pids.astype(str).astype(object)
        dates = (
            frame["date"].to_numpy(dtype="datetime64[ns]")
            if "date" in frame
            else np.zeros(len(frame), dtype="datetime64[ns]")
        )
        tables[name] = (pids, dates, _lines(frame, cols))
    out = []
    for pid, as_of, threshold in zip(
        queries["patient_id"].astype(str).tolist(),
        pd.to_datetime(queries["as_of"]).to_numpy(dtype="datetime64[ns]"),
        queries["threshold"].to_numpy(dtype=float).tolist(),
        strict=True,
    ):
        h = hashlib.sha256()
        h.update(
            f"model={model_version}\nas_of={str(as_of)[:10]}\nthreshold={threshold:.10g}\n".encode()
        )
        for name, (pids, dates, lines) in tables.items():
            # Frames are sorted by patient then date: slice instead of scanning.
            lo = np.searchsorted(pids, pid, side="left")
            hi = np.searchsorted(pids, pid, side="right")
            if name != "patients":
                hi = lo + np.searchsorted(dates[lo:hi], as_of, side="right")
            h.update(f"{name}\n".encode())
            h.update("\n".join(lines[lo:hi]).encode())
            h.update(b"\n")
        out.append(h.hexdigest())
    return out


# --------------------------------------------------------------------------- serving
def serve_forecasts(
    cohort: Cohort, queries: pd.DataFrame, endpoint: str, *, daily: bool = False
) -> list[dict[str, Any]]:
    """Forecast the queries with the live model and audit every answer before returning.

    The one serving path of every route that answers a forecast (JSON API,
    FHIR RiskAssessment, CDS Hooks, pages).

    Parameters
    ----------
    cohort : Cohort
        Histories of the queried patients.
    queries : DataFrame
        ``patient_id``, ``as_of`` and ``threshold`` per forecast.
    endpoint : str
        Short name of the route, written to the audit row.
    daily : bool
        Include the daily risk curves and bands (``?detail=daily``; the
        clinician page's chart); by default the answers carry the horizons only.

    Returns
    -------
    list of dict
        The policy's answers, in query order; each is in the audit table.

    Raises
    ------
    ApiProblem
        503 when no model is loaded.
    """
    model = model_state().get()  # one reference for the whole request
    answers = forecast_queries(cohort, model, queries, settings(), daily=daily)
    version = str(getattr(model, "version", None))
    hashes = inputs_hashes(cohort, queries, version)
    principal = g.get("principal")
    # A forecast without a principal means a route forgot its auth: the audit shows it.
    token_name = principal.name if principal is not None else "(unauthenticated)"
    rows = []
    for answer, digest in zip(answers, hashes, strict=True):
        sugg = answer.get("suggestion") or {}
        by = sugg.get("session_by")
        rows.append(
            {
                "token_name": token_name,
                "patient_id": str(answer["patient_id"]),
                "as_of": dt.date.fromisoformat(str(answer["as_of"])[:10]),
                "model_version": version,
                "inputs_hash": digest,
                "status": str(answer["status"]),
                "suggested_date": dt.date.fromisoformat(by) if by else None,
                "request_id": request_id(),
                "endpoint": endpoint,
            }
        )
    # The rows are committed by the store's audit writer while the route encodes
    # its answer; _await_audit holds the response until they are (never before).
    g.setdefault("kap_audit_tickets", []).append(store().submit_audit(rows))
    return answers


def forecast_for(
    pid: str,
    endpoint: str,
    cohort: Any = None,
    as_of: pd.Timestamp | None = None,
    *,
    daily: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Serve (and audit) the forecast of a stored patient (``as_of`` default: today).

    Returns the answer and the cohort it was computed from. Raises ApiProblem
    404 when the patient is unknown and no ``cohort`` is given, 503 without model.
    """
    model_state().get()
    st = store()
    if cohort is None:
        with st.read() as conn:
            if not st.known_patients(conn, [pid]):
                raise ApiProblem(404, "Unknown patient", "No patient with this id is stored.")
            cohort = st.cohort([pid], conn)
    if as_of is None:
        as_of = pd.Timestamp(dt.datetime.now(dt.UTC).date())
    queries = pd.DataFrame(
        {"patient_id": [pid], "as_of": [as_of], "threshold": [float(settings().threshold)]}
    )
    return serve_forecasts(cohort, queries, endpoint, daily=daily)[0], cohort


#: Values of the forecast routes' ``detail`` query parameter: the risk at the
#: horizons (default), or also the daily curve and band (``risk.daily``).
DETAILS = ("horizons", "daily")


def parse_detail(value: str | None, field: str = "query/detail") -> bool:
    """True when the caller asked for the daily curves (``?detail=daily``); absent or
    ``horizons``: False; any other value, the empty one included, is a 422 (the OpenAPI
    enum)."""
    if value is None or value == "horizons":
        return False
    if value == "daily":
        return True
    raise ApiProblem(
        422,
        "Invalid detail",
        errors=[{"field": field, "message": f"got {value!r}; allowed: {', '.join(DETAILS)}"}],
    )


#: Earliest accepted forecast date (pandas' nanosecond timestamps start in 1677).
EARLIEST_AS_OF = dt.date(1900, 1, 1)


def parse_as_of(value: str | None, field: str) -> pd.Timestamp:
    """A forecast date (``YYYY-MM-DD`` from 1900 to today UTC; default today)."""
    today = pd.Timestamp(dt.datetime.now(dt.UTC).date())
    if value is None or value == "":
        return today
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError
        parsed = dt.date.fromisoformat(value)
        if parsed < EARLIEST_AS_OF:
            raise ValueError
        day = pd.Timestamp(parsed)
    except ValueError:
        raise ApiProblem(
            422,
            "Invalid date",
            errors=[
                {"field": field, "message": f"got {value!r}; allowed: a date YYYY-MM-DD from 1900"}
            ],
        ) from None
    if day > today:
        raise ApiProblem(
            422,
            "Invalid date",
            errors=[{"field": field, "message": "a forecast date may not be in the future"}],
        )
    return day
