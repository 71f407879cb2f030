"""The EHR's prefetched data of a CDS Hooks request, combined with the stored history.

Prefetched Observations / QuestionnaireResponses / Procedures of the patient
are mapped by :mod:`forecast.fhir` and combined with the stored history for
that one request; they are never written to the store. They are mapped
together (panels with their members, a response with its total), but a
resource that cannot be read is left out alone, and a row the data contract
refuses is left out alone: each is named (type, id, why) in a note, and
whether any of them could hold a suicidal-ideation answer is reported
(:attr:`Combined.si_unread`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from forecast.cohort import Cohort, canonicalize, empty_frame
from forecast.contract import TABLES
from forecast.data import validate_records
from forecast.fhir import FhirError, map_resources
from forecast.fhir.triage import link_ids
from forecast.instruments import (
    LOINC_CSSRS_BEHAVIOR,
    LOINC_CSSRS_IDEATION,
    LOINC_CSSRS_PANEL,
    LOINC_PHQ9_ITEMS,
    LOINC_PHQ9_PANEL,
    LOINC_PHQ9_TOTAL,
    LOINC_SYSTEM,
)
from service.serving import questionnaires, store

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
#: The prefetch templates announced by discovery (the patient's PHQ-9 / C-SSRS data).
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&code=" + _CODES,
    "responses": "QuestionnaireResponse?patient={{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
}


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
_PREFETCH_EXPR = re.compile(r"prefetch\[(\d+)\]")


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
        links, readable = link_ids(res.get("item"))
        normalised = {link.rsplit("/", 1)[-1].strip().lower() for link in links}
        return not readable or bool(normalised & _SI_LINK_IDS)
    return False


def _resource_label(res: Mapping[str, Any], where: str) -> str:
    rtype = str(res.get("resourceType") or "resource")
    rid = res.get("id")
    if isinstance(rid, str) and rid.strip():
        return f"{rtype}/{rid.strip()[:64]}"
    return f"{rtype} without id ({where})"


def _map_readable(
    resources: list[dict[str, Any]],
    wheres: list[str],
    first: Any,
    pids: frozenset[str],
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
    forms = questionnaires()
    form_keys = _form_keys(forms)
    labels = [_resource_label(r, w) for r, w in zip(resources, wheres, strict=True)]

    def run(idx: list[int]) -> Any:
        return map_resources(
            [resources[i] for i in idx],
            expressions=[f"prefetch[{i}].resource" for i in idx],
            known_first_session=dict.fromkeys(pids, first) if first is not None else None,
            questionnaires=forms,
        )

    def reason(issue: Any) -> str:
        element = _PREFETCH_EXPR.sub("", issue.expression, count=1).removeprefix(".resource")
        text = _PREFETCH_EXPR.sub(lambda m: labels[int(m.group(1))], issue.diagnostics)
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
                m = _PREFETCH_EXPR.match(issue.expression)
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
class Combined:
    """What a patient-view request forecasts from."""

    cohort: Any  # None: no history stored and nothing usable prefetched
    notes: list[str]
    #: Prefetched data that could hold a suicidal-ideation answer were left out.
    si_unread: bool = False


def _stored_cohort(pid: str, use_stored: bool) -> tuple[Cohort, bool]:
    """The patient's stored cohort (an empty one when not stored) and whether it is stored."""
    st = store()
    with st.read() as conn:
        known = use_stored and bool(st.known_patients(conn, [pid]))
        cohort = st.cohort([pid], conn) if known else None
    if cohort is None:
        cohort = Cohort(
            canonicalize("patients", pd.DataFrame({"patient_id": [pid]})),
            empty_frame("sessions"),
            empty_frame("assessments"),
        )
    return cohort, known


def _add_prefetched_rows(
    frames: dict[str, pd.DataFrame],
    mapped: Any,
    pid: str,
    labels: dict[str, str],
    dropped: list[_Dropped],
) -> int:
    """Add the valid prefetched rows not dated like a stored row to ``frames``; count them.

    Rows left out are appended to ``dropped``.
    """
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
    return added


def combined_cohort(
    pid: str,
    prefetch: Mapping[str, Any],
    *,
    aliases: frozenset[str] = frozenset(),
    use_stored: bool = True,
) -> Combined:
    """Stored history plus prefetched rows (rows dated like a stored row are skipped).

    Prefetched resources that cannot be read, and rows that fail the data
    contract, are left out one by one and named in a note; the rest is used.
    ``si_unread`` says whether any of them could hold a suicidal-ideation answer.
    ``aliases`` are the other ids the prefetch names the patient by (the EHR's
    id, :func:`link_patient`); without ``use_stored`` no stored history is read.
    """
    cohort, known = _stored_cohort(pid, use_stored)
    notes: list[str] = []
    found = [
        (r, w)
        for r, w in _prefetch_resources(prefetch)
        if r.get("resourceType") in ("Observation", "QuestionnaireResponse", "Procedure")
    ]
    if not found:
        return Combined(cohort if known else None, notes)
    resources = [r for r, _ in found]
    wheres = [w for _, w in found]
    first = cohort.sessions["date"].min() if len(cohort.sessions) else None
    mapped, dropped = _map_readable(resources, wheres, first, aliases | {pid})
    if mapped is not None:  # the EHR's id of the patient is this patient
        for r in (*mapped.sessions, *mapped.assessments, *mapped.retractions):
            if r["patient_id"] in aliases:
                r["patient_id"] = pid
    if mapped is None:
        notes.append(_dropped_note(dropped))
        return Combined(cohort if known else None, notes, any(d.si for d in dropped))
    # Resources skipped for their status (entered-in-error, cancelled, ...) are
    # said, never dropped silently.
    skipped = sum(i.diagnostics.startswith("not imported:") for i in mapped.issues)
    if skipped:
        notes.append(
            f"{skipped} prefetched resource(s) were not used because of their status "
            "(e.g. entered-in-error, cancelled, in-progress)."
        )
    frames = {"sessions": cohort.sessions, "assessments": cohort.assessments}
    # Stored rows made from prefetched entered-in-error resources are left out.
    withdrawn = [r for r in mapped.retractions if r["patient_id"] == pid]
    if withdrawn:
        notes.append(_leave_out_withdrawn(frames, withdrawn, pid, known))
    labels = {f"prefetch[{i}].resource": _resource_label(r, w) for i, (r, w) in enumerate(found)}
    added = _add_prefetched_rows(frames, mapped, pid, labels, dropped)
    if dropped:
        notes.append(_dropped_note(dropped))
    if added:
        notes.append(f"{added} row(s) from the EHR's prefetch were used and not stored.")
    si_unread = any(d.si for d in dropped)
    if not known and added == 0:
        return Combined(None, notes, si_unread)
    return Combined(
        Cohort(cohort.patients, frames["sessions"], frames["assessments"]), notes, si_unread
    )


def _leave_out_withdrawn(
    frames: dict[str, pd.DataFrame], withdrawn: list[dict[str, Any]], pid: str, known: bool
) -> str:
    """Leave stored rows made from prefetched entered-in-error resources out of ``frames``.

    A CDS call only reads, so the store keeps them until the EHR sends the
    resource to POST /fhir/r4, which withdraws it. As on import, a stored row
    that also holds values of other resources (merged on import: a C-SSRS
    screen beside a wrong PHQ-9, say) stays unless they are all withdrawn too:
    no accepted value, least of all a safety answer, is dropped. Returns the
    note that says so.
    """
    st = store()
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
    return text + "."


# --- which kap-forecast patient the EHR's patient is ------------------------------------------
class PatientLinkError(ValueError):
    """The patient-identifier mapping (``FORECAST_CDS_PATIENT_IDS``) cannot be used."""


@dataclass(frozen=True)
class PatientLinks:
    """How an EHR's Patient identifiers name kap-forecast patients.

    Attributes
    ----------
    systems : tuple of str
        Identifier systems whose value *is* the kap-forecast ``patient_id``
        (the EHR's MRN system, when the clinic imported patients under it).
    identifiers : dict
        ``(system, value)`` -> ``patient_id``, one by one.
    context_fallback : bool
        When no identifier maps, use ``context.patientId`` as the
        kap-forecast id (off by default: two systems' ids that happen to be
        equal may be two different people).
    """

    systems: tuple[str, ...] = ()
    identifiers: Mapping[tuple[str, str], str] | None = None
    context_fallback: bool = False

    @property
    def configured(self) -> bool:
        return bool(self.systems or self.identifiers)


def load_patient_links(source: Any) -> PatientLinks:
    """Read the mapping: a JSON file path or the parsed document.

    The document::

        {"systems": ["https://ehr.example.org/fhir/sid/mrn"],
         "identifiers": [{"system": "https://ehr.example.org/fhir/sid/mrn",
                          "value": "000123", "patient_id": "P001"}],
         "context_fallback": false}

    Raises
    ------
    PatientLinkError
        Naming the file and the entry that cannot be used.
    """
    import json
    from pathlib import Path

    where = "FORECAST_CDS_PATIENT_IDS"
    if isinstance(source, str | Path):
        where = f"{where}={source}"
        try:
            doc = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PatientLinkError(f"{where}: cannot read ({exc})") from None
    else:
        doc = source
    if not isinstance(doc, Mapping):
        raise PatientLinkError(f"{where}: a JSON object is needed")
    unknown = set(doc) - {"systems", "identifiers", "context_fallback"}
    if unknown:
        raise PatientLinkError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: systems, "
                               "identifiers, context_fallback")
    systems = doc.get("systems") or []
    if not isinstance(systems, list) or not all(isinstance(s, str) and s for s in systems):
        raise PatientLinkError(f"{where}: systems must be a list of identifier system URIs")
    table: dict[tuple[str, str], str] = {}
    for k, e in enumerate(doc.get("identifiers") or []):
        ok = isinstance(e, Mapping) and all(
            isinstance(e.get(f), str) and e.get(f) for f in ("system", "value", "patient_id")
        )
        if not ok:
            raise PatientLinkError(f"{where}: identifiers[{k}] needs system, value and patient_id")
        key = (e["system"], e["value"])
        if table.get(key, e["patient_id"]) != e["patient_id"]:
            raise PatientLinkError(f"{where}: identifiers[{k}] maps {key} a second time")
        table[key] = e["patient_id"]
    fallback = doc.get("context_fallback", False)
    if not isinstance(fallback, bool):
        raise PatientLinkError(f"{where}: context_fallback must be true or false")
    return PatientLinks(tuple(systems), table, fallback)


def patient_links(app: Any = None) -> PatientLinks:
    """The app's mapping (``KAP_CDS_PATIENT_IDS`` or ``FORECAST_CDS_PATIENT_IDS``; read once)."""
    import os

    from flask import current_app

    app = app or current_app
    links = app.extensions.get("kap_cds_patient_ids")
    if links is None:
        source = app.config.get("KAP_CDS_PATIENT_IDS") or os.environ.get(
            "FORECAST_CDS_PATIENT_IDS"
        )
        links = load_patient_links(source) if source else PatientLinks()
        app.extensions["kap_cds_patient_ids"] = links
    return links


@dataclass(frozen=True)
class Linked:
    """Whose stored history a patient-view request uses.

    ``patient_id`` is the kap-forecast id (None: no stored history is used,
    the forecast is made from the prefetch alone under ``context_id``);
    ``aliases`` are the ids the prefetched resources may name the patient
    by; ``note`` says how the patient was found, or why not.
    """

    patient_id: str | None
    context_id: str
    aliases: frozenset[str]
    note: str | None = None


def _prefetched_patient(prefetch: Mapping[str, Any], context_id: str) -> Mapping[str, Any] | None:
    doc = prefetch.get("patient")
    if isinstance(doc, Mapping) and doc.get("resourceType") == "Bundle":
        entries = doc.get("entry") if isinstance(doc.get("entry"), list) else []
        found = [e.get("resource") for e in entries if isinstance(e, Mapping)]
        doc = next((r for r in found if isinstance(r, Mapping)), None)
    if not isinstance(doc, Mapping) or doc.get("resourceType") != "Patient":
        return None
    if doc.get("id") not in (None, context_id):
        return None  # not the patient of this request
    return doc


def link_patient(context_id: str, prefetch: Mapping[str, Any], links: PatientLinks) -> Linked:
    """The kap-forecast patient of a patient-view request.

    Without a mapping, ``context.patientId`` is the kap-forecast id. With
    one, the prefetched Patient's identifiers (system and value) decide:
    one kap-forecast id found is used; none or several use no stored
    history (unless ``context_fallback``), and a note says so, so that a
    wrong link never shows another patient's history.
    """
    aliases = frozenset({context_id})
    if not links.configured:
        return Linked(context_id, context_id, aliases)
    res = _prefetched_patient(prefetch, context_id)
    found: dict[str, list[str]] = {}
    for ident in (res or {}).get("identifier") or []:
        if not isinstance(ident, Mapping):
            continue
        system, value = ident.get("system"), ident.get("value")
        if not isinstance(system, str) or not isinstance(value, str) or not value:
            continue
        pid = (links.identifiers or {}).get((system, value))
        if pid is None and system in links.systems:
            pid = value
        if pid is not None:
            found.setdefault(pid, []).append(f"{system}|{value}")
    if len(found) == 1:
        ((pid, via),) = found.items()
        return Linked(pid, context_id, aliases | {pid},
                      f"EHR patient {context_id} is kap-forecast patient {pid} ({via[0]}).")
    if len(found) > 1:
        named = "; ".join(f"{p} ({', '.join(v)})" for p, v in sorted(found.items()))
        why = (f"the EHR patient's identifiers name several kap-forecast patients: {named}; "
               "fix FORECAST_CDS_PATIENT_IDS")
    elif res is None:
        why = "no Patient was prefetched (prefetch key 'patient'), so its identifiers are unknown"
    else:
        why = "no identifier of the EHR's Patient is mapped (FORECAST_CDS_PATIENT_IDS)"
    if links.context_fallback and len(found) <= 1:
        return Linked(context_id, context_id, aliases,
                      f"{why}; context.patientId {context_id} is used as the kap-forecast id.")
    return Linked(None, context_id, aliases,
                  f"{why}. kap-forecast's stored history is not used; this card reads only "
                  "the prefetched data.")
