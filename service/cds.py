"""CDS Hooks 2.0 service (blueprint ``cds``): maintenance timing in the EHR.

- ``GET /cds-services`` (open): discovery of one ``patient-view`` service.
- ``POST /cds-services/kap-forecast-maintenance``: answers cards. The EHR
  authenticates with a JWT bearer token as the CDS Hooks specification
  describes (signed by the EHR; ``iss`` in the allow-list, ``aud`` = the URL
  of this service endpoint, ``exp`` at most 5 minutes ahead, ``jti`` never
  seen before by any worker: ``Store.claim_jti``). Keys come from a
  configuration file (never fetched from the token's ``jku``): see
  :class:`CdsClients`.

Cards (they carry the same date and risks as the JSON forecast):

- a *critical* card when a suicidal-ideation flag is raised (any safety level;
  status ``urgent_review`` or ``safety_review``): review before any
  maintenance planning;
- otherwise, when prefetched data that could hold a suicidal-ideation answer
  could not be read, a *warning* "Suicidal-ideation data in the EHR could not
  be read: review it" naming them (``extension.kap-forecast.si_data_unread``);
- otherwise "Next maintenance session by <date>" (indicator ``info``, or
  ``warning`` when the session is due now or the patient is not in response),
  with the risks at the horizons and a link to the clinician page. When the
  risks are the population estimate (``risk.kind == "population"``, status
  insufficient_data), the summary and the risk line say "population
  estimate, not personalised" and ``extension.kap-forecast.risk_kind`` is
  ``population``: the numbers describe the model's training episodes, not the
  patient.

Prefetched Observations / QuestionnaireResponses / Procedures of the patient
are mapped by :mod:`forecast.fhir` and combined with the stored history for
that one request; they are never written to the store. They are mapped
together (panels with their members, a response with its total), but a
resource that cannot be read is left out alone, and a row the data contract
refuses is left out alone: each is named (type, id, why) in the card and the
rest is used.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pandas as pd
from flask import Blueprint, Response, current_app, g, jsonify, request

from forecast.fhir import (
    POPULATION_NOTE,
    FhirError,
    horizons_text,
    is_population,
    map_resources,
)
from forecast.instruments import (
    LOINC_CSSRS_BEHAVIOR,
    LOINC_CSSRS_IDEATION,
    LOINC_CSSRS_PANEL,
    LOINC_PHQ9_ITEMS,
    LOINC_PHQ9_PANEL,
    LOINC_PHQ9_TOTAL,
    LOINC_SYSTEM,
)
from forecast.safety import SAFETY_STATUSES
from service.auth import Principal, public
from service.clinic_openapi import operation, problem
from service.errors import ApiProblem

bp = Blueprint("cds", __name__)

SERVICE_ID = "kap-forecast-maintenance"
#: Longest token lifetime accepted (the specification recommends 5 minutes).
MAX_LIFETIME_SECONDS = 300
#: Clock skew tolerated on exp / iat.
LEEWAY_SECONDS = 30
ALLOWED_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384", "HS256")

_CODES = ",".join(
    f"{LOINC_SYSTEM}|{c}"
    for c in (
        LOINC_PHQ9_PANEL,
        LOINC_PHQ9_TOTAL,
        *LOINC_PHQ9_ITEMS,
        *LOINC_CSSRS_IDEATION,
        LOINC_CSSRS_BEHAVIOR,
    )
)
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&code=" + _CODES,
    "responses": "QuestionnaireResponse?patient={{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
}


# --- client configuration -------------------------------------------------------------------
@dataclass
class CdsClient:
    """One EHR allowed to call the service.

    Attributes
    ----------
    iss : str
        The issuer the EHR puts in its tokens.
    keys : list
        Verification keys (PEM public keys, JWK dicts or an HS256 secret).
    algorithms : tuple of str
        Algorithms accepted from this client.
    name : str
        Recorded in the audit table as ``cds:<name>``.
    """

    iss: str
    keys: list[Any]
    algorithms: tuple[str, ...]
    name: str
    kids: list[str | None] = field(default_factory=list)


class CdsConfigError(ValueError):
    """The CDS clients file cannot be used."""


def load_clients(source: Any, base: Path | None = None) -> dict[str, CdsClient]:
    """Read the allow-list of EHR clients.

    Parameters
    ----------
    source : str, Path or mapping
        A JSON file path or the parsed document::

            {"audience": "https://forecast.example.org/cds-services/kap-forecast-maintenance",
             "clients": [
               {"iss": "https://ehr.example.org", "name": "ehr",
                "jwks": {"keys": [...]} | "jwks_file": "ehr-jwks.json"
                | "public_key_file": "ehr.pem" | "public_key": "-----BEGIN ...",
                "algorithms": ["RS256", "ES384"]},
               {"iss": "test-ehr", "secret": "...", "algorithms": ["HS256"]}]}

    base : Path, optional
        Folder that relative file names are read from (the file's folder).

    Returns
    -------
    dict
        ``iss`` -> :class:`CdsClient`.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CdsConfigError(f"FORECAST_CDS_CLIENTS={path}: cannot read ({exc})") from None
        base = path.parent
    else:
        doc = dict(source)
    base = base or Path.cwd()
    clients: dict[str, CdsClient] = {}
    for k, c in enumerate(doc.get("clients") or []):
        where = f"clients[{k}]"
        iss = c.get("iss")
        if not isinstance(iss, str) or not iss:
            raise CdsConfigError(f"{where}.iss: a non-empty issuer is required")
        algs = tuple(c.get("algorithms") or ())
        bad = [a for a in algs if a not in ALLOWED_ALGORITHMS]
        if not algs or bad:
            raise CdsConfigError(
                f"{where}.algorithms: allowed: {', '.join(ALLOWED_ALGORITHMS)}; got {list(algs)}"
            )
        keys: list[Any] = []
        kids: list[str | None] = []
        jwks = c.get("jwks")
        if c.get("jwks_file"):
            jwks = json.loads((base / c["jwks_file"]).read_text(encoding="utf-8"))
        if jwks:
            for jwk in jwks.get("keys", []):
                keys.append(jwt.PyJWK(jwk).key)
                kids.append(jwk.get("kid"))
        if c.get("public_key_file"):
            keys.append((base / c["public_key_file"]).read_text(encoding="utf-8"))
            kids.append(c.get("kid"))
        if c.get("public_key"):
            keys.append(c["public_key"])
            kids.append(c.get("kid"))
        if c.get("secret"):
            if algs != ("HS256",):
                raise CdsConfigError(f"{where}: a shared secret needs algorithms ['HS256'] only")
            if len(str(c["secret"]).encode()) < 32:
                raise CdsConfigError(f"{where}.secret: use at least 32 bytes (RFC 7518 3.2)")
            keys.append(c["secret"])
            kids.append(c.get("kid"))
        if not keys:
            raise CdsConfigError(
                f"{where}: give jwks, jwks_file, public_key, public_key_file or (tests) secret"
            )
        clients[iss] = CdsClient(iss, keys, algs, str(c.get("name") or iss), kids)
    return clients


@bp.record_once
def _load_at_start(setup: Any) -> None:
    # Read the clients file when the app is built, so a broken file stops the
    # service at start with a clear message instead of failing EHR calls later.
    _state(setup.app)


def _state(app: Any = None) -> dict[str, Any]:
    """Clients and audience of this app (loaded once)."""
    app = app or current_app
    state = app.extensions.get("kap_cds")
    if state is None:
        source = app.config.get("KAP_CDS_CLIENTS") or os.environ.get("FORECAST_CDS_CLIENTS")
        doc: Mapping[str, Any] = {}
        base = None
        if isinstance(source, Mapping):
            doc = source
        elif source:
            path = Path(source)
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CdsConfigError(f"FORECAST_CDS_CLIENTS={path}: cannot read ({exc})") from None
            base = path.parent
        clients = load_clients(doc, base) if doc else {}
        doc_audience = doc.get("audience")
        audience = (
            app.config.get("KAP_CDS_AUDIENCE")
            or os.environ.get("FORECAST_CDS_AUDIENCE")
            or doc_audience
        )
        state = {"clients": clients, "audience": audience}
        app.extensions["kap_cds"] = state
    return state


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, detail=detail, headers={"WWW-Authenticate": 'Bearer realm="cds-hooks"'})


def authenticate_ehr() -> Principal:
    """Verify the EHR's JWT (CDS Hooks 2.0 "Trusting CDS Clients").

    Raises
    ------
    ApiProblem
        401 with a reason that names the failed check (never the token).
    """
    state = _state()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Send the EHR's JWT as 'Authorization: Bearer <jwt>'.")
    token = token.strip()
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        head = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _unauthorized("The bearer token is not a JWT.") from None
    iss = unverified.get("iss")
    client = state["clients"].get(iss) if isinstance(iss, str) else None
    if client is None:
        raise _unauthorized("The token's issuer (iss) is not an allowed CDS client.")
    alg = head.get("alg")
    if alg not in client.algorithms:
        raise _unauthorized(f"Algorithm {alg!r} is not allowed for this client.")
    audience = state["audience"] or request.base_url
    kid = head.get("kid")
    candidates = [k for k, kk in zip(client.keys, client.kids, strict=True) if kk in (kid, None)]
    claims = None
    last_error = "no key of this client matches the token's kid"
    for key in candidates or client.keys:
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience,
                issuer=client.iss,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
            break
        except jwt.InvalidSignatureError:
            last_error = "the signature does not verify with the client's keys"
        except jwt.ExpiredSignatureError:
            raise _unauthorized("The token has expired (exp).") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("The token's audience (aud) is not this service's URL.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"The token lacks the required claim {exc.claim!r}.") from None
        except jwt.PyJWTError as exc:
            last_error = type(exc).__name__
    if claims is None:
        raise _unauthorized(f"The token was rejected: {last_error}.")
    now = time.time()
    if float(claims["exp"]) > now + MAX_LIFETIME_SECONDS + LEEWAY_SECONDS:
        raise _unauthorized("The token's exp is more than 5 minutes ahead; send a short-lived JWT.")
    # Recorded in the store, so a replay to another worker or process is refused too.
    store = current_app.extensions["kap_store"]
    if not store.claim_jti(client.iss, str(claims["jti"]), float(claims["exp"]) + LEEWAY_SECONDS):
        raise _unauthorized("The token's jti was already used (replay).")
    return Principal(f"cds:{client.name}"[:128], "clinician")


# --- discovery ------------------------------------------------------------------------------
@bp.get("/cds-services")
@public
@operation(
    "CDS Hooks discovery",
    {"200": {"description": "services", "content": {"application/json": {}}}},
    public=True,
)
def discovery() -> Response:
    """CDS Hooks discovery: one patient-view service with its prefetch templates."""
    return jsonify(
        {
            "services": [
                {
                    "hook": "patient-view",
                    "id": SERVICE_ID,
                    "title": "KAP maintenance timing (kap-forecast)",
                    "description": (
                        "Suggests when the next ketamine maintenance session is due from the "
                        "patient's PHQ-9 history; raises a critical card when a suicidal-ideation "
                        "answer needs review. Decision support, not a suicide-risk assessment."
                    ),
                    "prefetch": PREFETCH,
                    "usageRequirements": (
                        "The EHR's patient id must equal the kap-forecast patient_id; sign "
                        "requests with a JWT (keys configured in FORECAST_CDS_CLIENTS)."
                    ),
                }
            ]
        }
    )


# --- the service ------------------------------------------------------------------------------
def _prefetch_resources(prefetch: Mapping[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The prefetched resources, each with where it was in the request (for messages)."""
    out: list[tuple[dict[str, Any], str]] = []
    for key in ("observations", "responses", "procedures"):
        doc = prefetch.get(key)
        if not isinstance(doc, Mapping):
            continue
        if doc.get("resourceType") == "Bundle":
            entries = doc.get("entry") if isinstance(doc.get("entry"), list) else []
            out += [
                (e["resource"], f"prefetch.{key}.entry[{j}].resource")
                for j, e in enumerate(entries)
                if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
            ]
        elif doc.get("resourceType"):
            out.append((dict(doc), f"prefetch.{key}"))
    return out


# --- prefetched data that cannot be used ------------------------------------------------------
#: Assessment columns holding a suicidal-ideation answer (PHQ-9 item 9, the C-SSRS screener).
SI_COLUMNS = ("phq9_9", "cssrs_ideation", "cssrs_behavior")
#: Summary of the card when such data were prefetched but could not be used (and no
#: safety flag makes the card critical anyway).
UNREAD_SI_SUMMARY = "Suicidal-ideation data in the EHR could not be read: review it"
#: Observation codes that can carry a suicidal-ideation answer: PHQ-9 item 9, the PHQ-9
#: panel (its members), the C-SSRS screener's questions and panel.
_SI_CODES = frozenset(
    {
        LOINC_PHQ9_ITEMS[8],
        LOINC_PHQ9_PANEL,
        *LOINC_CSSRS_IDEATION,
        LOINC_CSSRS_BEHAVIOR,
        LOINC_CSSRS_PANEL,
    }
)
#: QuestionnaireResponse linkIds (last path segment, lower case) read as such an answer.
_SI_LINK_IDS = frozenset(
    {c.lower() for c in (LOINC_PHQ9_ITEMS[8], *LOINC_CSSRS_IDEATION, LOINC_CSSRS_BEHAVIOR)}
    | {"phq-phq9-q09", "q9", "phq9_9"}
)
#: A questionnaire canonical naming one of these may be a PHQ-9 or C-SSRS form.
_SI_FORM_MARKERS = ("phq", "ssrs", LOINC_PHQ9_PANEL, LOINC_CSSRS_PANEL)
#: Named one by one in a card at most; the rest are counted.
MAX_NAMED = 10
_EXPR = re.compile(r"prefetch\[(\d+)\]")


@dataclass
class _Dropped:
    """A prefetched resource (or a row made from some) left out of the forecast."""

    what: str  # "Observation/o1", "Procedure (prefetch.procedures.entry[2].resource)", ...
    why: str
    si: bool  # could carry a suicidal-ideation answer


def _codes_under(node: Any) -> set[str]:
    """Every string ``code`` found in a JSON fragment (codings, nested concepts)."""
    found: set[str] = set()
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, Mapping):
            code = cur.get("code")
            if isinstance(code, str):
                found.add(code.strip())
            stack.extend(v for v in cur.values() if isinstance(v, Mapping | list))
        elif isinstance(cur, list):
            stack.extend(cur)
    return found


def _link_ids(items: Any) -> tuple[set[str], bool]:
    """The linkIds of a QuestionnaireResponse's items (nested too) and whether all were read."""
    found: set[str] = set()
    readable = True
    stack = [items]
    while stack:
        cur = stack.pop()
        if cur is None:
            continue
        if not isinstance(cur, list):
            readable = False
            continue
        for it in cur:
            if not isinstance(it, Mapping):
                readable = False
                continue
            link = it.get("linkId")
            if isinstance(link, str):
                found.add(link.rsplit("/", 1)[-1].strip().lower())
            elif link is not None:
                readable = False
            stack.append(it.get("item"))
            answers = it.get("answer")
            if isinstance(answers, list):
                stack.extend(a.get("item") for a in answers if isinstance(a, Mapping))
            elif answers is not None:
                readable = False
    return found, readable


def _form_keys(forms: Any) -> set[str]:
    keys: set[str] = set()
    for f in forms or ():
        get = f.get if isinstance(f, Mapping) else lambda k, f=f: getattr(f, k, None)
        if get("url"):
            keys.add(str(get("url")))
        if get("id"):
            keys.add(f"Questionnaire/{get('id')}")
    return keys


def _may_carry_si(res: Mapping[str, Any], forms: set[str]) -> bool:
    """Whether an unreadable resource could hold a suicidal-ideation answer.

    When in doubt, yes: an Observation whose code cannot be read (the prefetch asks
    only for PHQ-9 and C-SSRS codes), a QuestionnaireResponse whose items cannot be
    walked or which names a PHQ-9 / C-SSRS or a configured form.
    """
    rtype = res.get("resourceType")
    if rtype == "Observation":
        codes = _codes_under(res.get("code"))
        if not codes:
            return True
        codes |= _codes_under(res.get("component"))
        return bool(codes & _SI_CODES)
    if rtype == "QuestionnaireResponse":
        canonical = res.get("questionnaire")
        if canonical is not None and not isinstance(canonical, str):
            return True
        about = (canonical or "").lower()
        if any(m in about for m in _SI_FORM_MARKERS):
            return True
        if canonical and canonical.split("|", 1)[0] in forms:
            return True
        if res.get("contained"):
            return True
        links, readable = _link_ids(res.get("item"))
        return not readable or bool(links & _SI_LINK_IDS)
    return False


def _label(res: Mapping[str, Any], where: str) -> str:
    rtype = str(res.get("resourceType") or "resource")
    rid = res.get("id")
    if isinstance(rid, str) and rid.strip():
        return f"{rtype}/{rid.strip()[:64]}"
    return f"{rtype} without id ({where})"


def _map_readable(
    resources: list[dict[str, Any]],
    wheres: list[str],
    first: Any,
    pid: str,
) -> tuple[Any, list[_Dropped]]:
    """Map the prefetched resources together, leaving out those that cannot be read.

    All resources are mapped together (panels with their members, a response
    with its total Observation). On a :class:`FhirError` the resources its
    errors name are dropped and the rest mapped again, until the rest maps
    (each round drops at least one). An error naming no resource (none does
    today) falls back to mapping each resource alone to find the unreadable
    ones; if even that finds none, nothing is used and every resource is named.

    Returns
    -------
    mapped : MappedRecords or None
        None when no resource is left.
    dropped : list of _Dropped
    """
    forms = current_app.extensions.get("kap_questionnaires", [])
    form_keys = _form_keys(forms)
    labels = [_label(r, w) for r, w in zip(resources, wheres, strict=True)]

    def run(idx: list[int]) -> Any:
        return map_resources(
            [resources[i] for i in idx],
            expressions=[f"prefetch[{i}].resource" for i in idx],
            known_first_session={pid: first} if first is not None else None,
            questionnaires=forms,
        )

    def reason(issue: Any) -> str:
        element = _EXPR.sub("", issue.expression, count=1).removeprefix(".resource")
        text = _EXPR.sub(lambda m: labels[int(m.group(1))], issue.diagnostics)
        text = text.replace(".resource.", ".").replace(".resource", "")
        return f"{element.lstrip('.')}: {text}" if element.strip(".") else text

    dropped: list[_Dropped] = []
    alive = list(range(len(resources)))
    while alive:
        try:
            return run(alive), dropped
        except FhirError as err:
            errors = [i for i in err.issues if i.severity == "error"] or err.issues
            blamed: dict[int, list[str]] = {}
            for issue in errors:
                m = _EXPR.match(issue.expression)
                if m and int(m.group(1)) in alive:
                    blamed.setdefault(int(m.group(1)), []).append(reason(issue))
            if not blamed:
                for i in alive:
                    try:
                        run([i])
                    except FhirError as alone:
                        blamed[i] = [reason(x) for x in alone.issues if x.severity == "error"]
            if not blamed:
                why = "could not be read together with the other prefetched resources: " + (
                    "; ".join(reason(x) for x in errors[:3]) or str(err)
                )
                blamed = {i: [why] for i in alive}
            for i, whys in blamed.items():
                dropped.append(
                    _Dropped(
                        labels[i],
                        "; ".join(whys[:3]) or "not readable",
                        _may_carry_si(resources[i], form_keys),
                    )
                )
            alive = [i for i in alive if i not in blamed]
    return None, dropped


def _valid_rows(
    table: str, recs: list[dict[str, Any]], pid: str, mapped: Any, labels: dict[str, str]
) -> tuple[Any, list[_Dropped]]:
    """Validate one table's prefetched rows, leaving out (and naming) those refused.

    Returns the validated frame of the rows kept (None when none is) and the rows
    left out. A problem that names no row (none does for a list of rows) leaves
    them all out.
    """
    from forecast.data import validate_records

    dropped: list[_Dropped] = []
    while recs:
        rows = [{k: v for k, v in r.items() if k not in ("patient_id", "id")} for r in recs]
        frame, problems = validate_records(table, rows, patient_id=pid, allow_id=False)
        if not problems:
            return frame, dropped
        rows_of = {p.row for p in problems}
        bad = set(range(len(recs))) if None in rows_of else rows_of
        for k in sorted(bad):
            rec = recs[k]
            srcs = mapped.sources.get((table, rec["id"])) or []
            names = [labels.get(s, s) for s in srcs] or [str(rec["id"])]
            whys = [
                f"{p.column}: {p.message}" if p.column else p.message
                for p in problems
                if p.row in (k, None)
            ]
            what = "session" if table == "sessions" else "assessment"
            dropped.append(
                _Dropped(
                    f"the {what} of {rec.get('date')} (from {', '.join(names)})",
                    "; ".join(whys[:3]),
                    table == "assessments" and any(rec.get(c) is not None for c in SI_COLUMNS),
                )
            )
        recs = [r for k, r in enumerate(recs) if k not in bad]
    return None, dropped


def _differing_si(
    stored: pd.DataFrame,
    recs: list[dict[str, Any]],
    stored_dates: set[str],
    mapped: Any,
    labels: dict[str, str],
) -> list[_Dropped]:
    """Prefetched assessments skipped for a stored row's date whose ideation answers differ.

    A prefetched row dated like a stored row is not used (the stored row is,
    and is usually the same data sent to POST /fhir/r4). When the two disagree
    on a suicidal-ideation answer, or the stored row lacks one the prefetch
    has, the prefetched answer would go unseen: it is named, and a review asked.
    """
    out: list[_Dropped] = []
    for rec in recs:
        if rec["date"] not in stored_dates:
            continue
        row = stored[stored["date"] == pd.Timestamp(rec["date"])].iloc[0]
        differ = []
        for col in SI_COLUMNS:
            mine = rec.get(col)
            theirs = row.get(col)
            theirs = None if theirs is None or pd.isna(theirs) else float(theirs)
            if mine is not None and (theirs is None or float(mine) != theirs):
                shown = "none" if theirs is None else f"{theirs:g}"
                differ.append(f"{col} {float(mine):g} here, {shown} in kap-forecast")
        if differ:
            srcs = mapped.sources.get(("assessments", rec["id"])) or []
            names = [labels.get(s, s) for s in srcs] or [str(rec["id"])]
            out.append(
                _Dropped(
                    f"the assessment of {rec['date']} (from {', '.join(names)})",
                    "not used: kap-forecast has a row of the same date and it differs on "
                    "suicidal-ideation answers (" + "; ".join(differ) + "); send the EHR's "
                    "resources to POST /fhir/r4 or correct the stored row",
                    True,
                )
            )
    return out


def _dropped_note(dropped: list[_Dropped]) -> str:
    lines = [f"- {d.what}: {d.why}" for d in dropped[:MAX_NAMED]]
    if len(dropped) > MAX_NAMED:
        lines.append(f"- and {len(dropped) - MAX_NAMED} more")
    return (
        f"{len(dropped)} prefetched resource(s) or row(s) could not be read or used and were "
        "left out of this forecast (the rest of the prefetch was used):\n" + "\n".join(lines)
    )


@dataclass
class _Combined:
    """What a patient-view request forecasts from."""

    cohort: Any  # None: no history stored and nothing usable prefetched
    notes: list[str]
    #: Prefetched data that could hold a suicidal-ideation answer were left out.
    si_unread: bool = False


def _combined_cohort(pid: str, prefetch: Mapping[str, Any]) -> _Combined:
    """Stored history plus prefetched rows (rows dated like a stored row are skipped).

    Prefetched resources that cannot be read, and rows that fail the data
    contract, are left out one by one and named in a note; the rest is used.
    ``si_unread`` says whether any of them could hold a suicidal-ideation answer.
    """
    from forecast.cohort import Cohort, canonicalize, empty_frame
    from forecast.contract import TABLES

    st = current_app.extensions["kap_store"]
    with st.read() as conn:
        known = bool(st.known_patients(conn, [pid]))
        cohort = st.cohort([pid], conn) if known else None
    notes: list[str] = []
    if cohort is None:
        cohort = Cohort(
            canonicalize("patients", pd.DataFrame({"patient_id": [pid]})),
            empty_frame("sessions"),
            empty_frame("assessments"),
        )
    found = [
        (r, w)
        for r, w in _prefetch_resources(prefetch)
        if r.get("resourceType") in ("Observation", "QuestionnaireResponse", "Procedure")
    ]
    if not found:
        return _Combined(cohort if known else None, notes)
    resources = [r for r, _ in found]
    wheres = [w for _, w in found]
    first = cohort.sessions["date"].min() if len(cohort.sessions) else None
    mapped, dropped = _map_readable(resources, wheres, first, pid)
    if mapped is None:
        notes.append(_dropped_note(dropped))
        return _Combined(cohort if known else None, notes, any(d.si for d in dropped))
    # Resources skipped for their status (entered-in-error, cancelled, ...) are
    # said, never dropped silently.
    skipped = sum(i.diagnostics.startswith("not imported:") for i in mapped.issues)
    if skipped:
        notes.append(
            f"{skipped} prefetched resource(s) were not used because of their status "
            "(e.g. entered-in-error, cancelled, in-progress)."
        )
    frames = {"sessions": cohort.sessions, "assessments": cohort.assessments}
    # Prefetched resources marked entered-in-error: rows stored from them are left
    # out of this forecast. A CDS call only reads, so the store keeps them until the
    # EHR sends the resource to POST /fhir/r4, which withdraws it.
    # As on import, a stored row that also holds values of other resources (merged
    # on import: a C-SSRS screen beside a wrong PHQ-9, say) stays unless they are
    # all withdrawn too: no accepted value, least of all a safety answer, is dropped.
    withdrawn = [r for r in mapped.retractions if r["patient_id"] == pid]
    if withdrawn:
        gone_rows: set[tuple[str, str]] = set()
        kept: set[tuple[str, str]] = set()
        if known:
            ids = {(w["table"], w["id"]) for w in withdrawn}
            with st.read() as conn:
                for r in withdrawn:
                    loc = st.locate(conn, r["table"], pid, r["id"])
                    if loc is None:
                        continue
                    alone = all((r["table"], o) in ids for o in loc["others"])
                    target = gone_rows if alone else kept
                    target.add((r["table"], loc["date"]))
        for table in ("sessions", "assessments"):
            gone = [pd.Timestamp(d) for t, d in gone_rows if t == table]
            if gone:
                frames[table] = frames[table][~frames[table]["date"].isin(gone)].reset_index(
                    drop=True
                )
        text = f"{len(withdrawn)} prefetched resource(s) are marked entered-in-error"
        if gone_rows:
            text += (
                f"; {len(gone_rows)} stored row(s) made from them were left out of this forecast"
            )
        if kept:
            text += f"; {len(kept)} stored row(s) also holding other resources' values were kept"
        if not gone_rows and not kept:
            text += "; no stored row was made from them"
        notes.append(text + ".")
    labels = {f"prefetch[{i}].resource": _label(r, w) for i, (r, w) in enumerate(found)}
    added = 0
    for table in ("sessions", "assessments"):
        recs = [r for r in getattr(mapped, table) if r["patient_id"] == pid]
        stored_dates = set(frames[table]["date"].dt.strftime("%Y-%m-%d"))
        if table == "assessments":
            dropped += _differing_si(frames[table], recs, stored_dates, mapped, labels)
        recs = [r for r in recs if r["date"] not in stored_dates]
        if not recs:
            continue
        frame, refused = _valid_rows(table, recs, pid, mapped, labels)
        dropped += refused
        if frame is None:
            continue
        cols = [c.name for c in TABLES[table]]
        frames[table] = canonicalize(
            table, pd.concat([frames[table][cols], frame[cols]], ignore_index=True)
        )
        added += len(frame)
    if dropped:
        notes.append(_dropped_note(dropped))
    if added:
        notes.append(f"{added} row(s) from the EHR's prefetch were used and not stored.")
    si_unread = any(d.si for d in dropped)
    if not known and added == 0:
        return _Combined(None, notes, si_unread)
    return _Combined(
        Cohort(cohort.patients, frames["sessions"], frames["assessments"]), notes, si_unread
    )


def _page_url(pid: str) -> str:
    from urllib.parse import quote

    base = (
        current_app.config.get("KAP_PUBLIC_URL")
        or os.environ.get("FORECAST_PUBLIC_URL")
        or request.host_url
    )
    return base.rstrip("/") + "/patients/" + quote(pid, safe="")


def _human(day: str | None) -> str:
    if not day:
        return ""
    t = pd.Timestamp(day)
    return f"{t.day} {t.strftime('%b %Y')}"


#: First paragraph of a card whose prefetch held unreadable suicidal-ideation data.
UNREAD_SI_LEAD = (
    "**Prefetched EHR data that can hold a suicidal-ideation answer (PHQ-9 item 9, C-SSRS) "
    "could not be read, so the safety rules could not check them.** Review them in the EHR "
    "before maintenance planning; they are listed next. The rest of this card leaves them out."
)


def cards_for(
    answer: Mapping[str, Any], link: str, notes: list[str], *, si_unread: bool = False
) -> list[dict[str, Any]]:
    """The CDS Hooks cards of one forecast answer.

    Critical for any safety level or a safety status (``urgent_review``,
    ``safety_review``). Otherwise, with ``si_unread`` (prefetched data that could
    hold a suicidal-ideation answer were left out unread), at least a warning
    whose summary asks for a review (:data:`UNREAD_SI_SUMMARY`), never an info
    card with a routine date.
    """
    version = answer.get("model_version")
    source = {
        "label": f"kap-forecast (model {version})",
        "topic": {"code": "kap-maintenance", "display": "Ketamine maintenance timing"},
    }
    links = [{"label": "Open the kap-forecast page", "url": link, "type": "absolute"}]
    safety = answer.get("safety") or {}
    sug = answer.get("suggestion") or {}
    status = answer.get("status")
    population = is_population(answer)
    data = {
        "patient_id": answer["patient_id"],
        "as_of": answer["as_of"],
        "model_version": version,
        "status": status,
        "session_by": sug.get("session_by"),
        "window_start": sug.get("window_start"),
        "threshold": sug.get("threshold"),
        "risks": {
            str(h["days"]): h["risk"] for h in (answer.get("risk") or {}).get("horizons") or []
        },
        "risk_kind": (answer.get("risk") or {}).get("kind"),
        "safety_level": safety.get("level"),
    }
    if si_unread:
        data["si_data_unread"] = True
    tail = (
        "\n\n*Decision support for the clinician; not a suicide-risk assessment and not a "
        "clearance.*"
    )
    extra = ("\n\n" + "\n\n".join(notes)) if notes else ""
    if safety.get("level") or status in SAFETY_STATUSES:
        reasons = "\n".join(f"- {r}" for r in safety.get("reasons") or [])
        statement = safety.get("statement") or (
            "A suicidal-ideation flag is in force: clinical review is needed before any "
            "maintenance planning."
        )
        return [
            {
                "uuid": str(uuid.uuid4()),
                "summary": "Suicidal-ideation answer on record: clinical review needed before "
                "maintenance planning",
                "indicator": "critical",
                "detail": f"**{statement}**\n\n{reasons}\n\n"
                f"{sug.get('rationale') or ''}{extra}{tail}",
                "source": source,
                "links": links,
                "extension": {"kap-forecast": data},
            }
        ]
    risks = horizons_text(answer)
    if sug.get("session_by"):
        due = status == "session_due"
        summary = (
            f"Maintenance session due now (by {_human(sug['session_by'])})"
            if due
            else f"Next maintenance session by {_human(sug['session_by'])}"
        ) + (f" ({POPULATION_NOTE})" if population else "")
        label = (
            f", {POPULATION_NOTE} (the model's training episodes, not this patient)"
            if population
            else ""
        )
        detail = (
            f"{sug.get('rationale') or ''}\n\n"
            f"Risk that the benefit has waned (after {answer['as_of']}){label}: {risks}."
            + (
                f" Suggested window {sug['window_start']} to {sug['window_end']};"
                f" threshold {float(sug['threshold']):.0%}."
                if sug.get("window_start")
                else ""
            )
            + f"\n\n{answer.get('status_reason') or ''}"
        )
        indicator = "warning" if due else "info"
    else:
        summary = {
            "not_in_response": "Response not reached or benefit waned since the last session: "
            "review the treatment plan",
            "no_treatment": "No ketamine session on record: no maintenance forecast",
            "insufficient_data": "Not enough PHQ-9 data for a maintenance forecast",
        }.get(str(status), "No maintenance date suggested")
        detail = f"{answer.get('status_reason') or ''}\n\n{sug.get('rationale') or ''}"
        indicator = "warning" if status == "not_in_response" else "info"
    if si_unread:
        summary, indicator = UNREAD_SI_SUMMARY, "warning"
        # What could not be read comes first, then the suggestion that leaves it out.
        detail, extra = f"{UNREAD_SI_LEAD}{extra}\n\n{detail}", ""
    return [
        {
            "uuid": str(uuid.uuid4()),
            "summary": summary[:140],
            "indicator": indicator,
            "detail": detail + extra + tail,
            "source": source,
            "links": links,
            "extension": {"kap-forecast": data},
        }
    ]


@bp.post(f"/cds-services/{SERVICE_ID}")
@public  # authenticated by the EHR's JWT below, not by a service token
@operation(
    "CDS Hooks patient-view: maintenance timing cards",
    {
        "200": {"description": "cards", "content": {"application/json": {}}},
        "400": problem(
            "Not strict JSON (e.g. a repeated key), not a patient-view request or no "
            "context.patientId"
        ),
        "401": problem("Missing or invalid EHR JWT (signature, iss, aud, exp, jti)"),
        "503": problem("No model loaded"),
    },
    public=True,
    request_body={"required": True, "content": {"application/json": {}}},
)
def patient_view() -> Response:
    """Answer a patient-view hook with cards."""
    from service import api

    g.principal = authenticate_ehr()
    body = api.json_body()
    if not isinstance(body, Mapping) or body.get("hook") != "patient-view":
        raise ApiProblem(
            400,
            "Unsupported hook",
            errors=[{"field": "/hook", "message": "allowed: patient-view"}],
        )
    context = body.get("context") if isinstance(body.get("context"), Mapping) else {}
    pid = context.get("patientId")
    if not isinstance(pid, str) or not pid.strip():
        raise ApiProblem(
            400,
            "Missing patient",
            errors=[{"field": "/context/patientId", "message": "required: the patient's id"}],
        )
    prefetch = body.get("prefetch") if isinstance(body.get("prefetch"), Mapping) else {}
    combined = _combined_cohort(pid, prefetch)
    cohort, notes, si_unread = combined.cohort, combined.notes, combined.si_unread
    extra = ("\n\n" + "\n\n".join(notes)) if notes else ""
    if cohort is None:
        advice = (
            "Import the patient's PHQ-9 answers and ketamine sessions "
            "(FHIR or the JSON API) to get maintenance timing suggestions."
        )
        card: dict[str, Any] = {
            "uuid": str(uuid.uuid4()),
            "summary": "kap-forecast has no ketamine-treatment history for this patient",
            "indicator": "info",
            "detail": advice + extra,
            "source": {"label": "kap-forecast"},
        }
        if si_unread:
            card.update(
                summary=UNREAD_SI_SUMMARY,
                indicator="warning",
                detail=f"{UNREAD_SI_LEAD}{extra}\n\n{advice}",
                extension={"kap-forecast": {"patient_id": pid, "si_data_unread": True}},
            )
        return jsonify({"cards": [card]})
    from service.fhir_api import forecast_for

    try:
        answer, _ = forecast_for(pid, "cds_patient_view", cohort)
    except ApiProblem as exc:
        if exc.status != 503:
            raise
        # No model: the safety rules do not need one, so a flag still gets its card.
        return jsonify(
            {"cards": _cards_without_model(pid, cohort, exc.detail or "", notes, si_unread)}
        )
    return jsonify({"cards": cards_for(answer, _page_url(pid), notes, si_unread=si_unread)})


def _cards_without_model(
    pid: str, cohort: Any, why: str, notes: list[str] | None = None, si_unread: bool = False
) -> list[dict[str, Any]]:
    from service.pages import rule_safety

    safety = rule_safety(cohort)
    links = [{"label": "Open the kap-forecast page", "url": _page_url(pid), "type": "absolute"}]
    extra = ("\n\n" + "\n\n".join(notes)) if notes else ""
    data: dict[str, Any] = {"patient_id": pid, "safety_level": safety["level"]}
    if si_unread:
        data["si_data_unread"] = True
    if safety["level"]:
        reasons = "\n".join(f"- {r}" for r in safety["reasons"])
        return [
            {
                "uuid": str(uuid.uuid4()),
                "summary": "Suicidal-ideation answer on record: clinical review needed before "
                "maintenance planning",
                "indicator": "critical",
                "detail": f"**{safety['statement']}**\n\n{reasons}\n\nNo maintenance forecast "
                f"is available right now.{extra}",
                "source": {"label": "kap-forecast (safety rules)"},
                "links": links,
                "extension": {"kap-forecast": data},
            }
        ]
    if si_unread:
        return [
            {
                "uuid": str(uuid.uuid4()),
                "summary": UNREAD_SI_SUMMARY,
                "indicator": "warning",
                "detail": f"{UNREAD_SI_LEAD}{extra}\n\n{why}\n\n{safety['statement']}",
                "source": {"label": "kap-forecast (safety rules)"},
                "links": links,
                "extension": {"kap-forecast": data},
            }
        ]
    return [
        {
            "uuid": str(uuid.uuid4()),
            "summary": "Maintenance forecast not available right now",
            "indicator": "info",
            "detail": f"{why}\n\n{safety['statement']}{extra}",
            "source": {"label": "kap-forecast"},
            "links": links,
        }
    ]
