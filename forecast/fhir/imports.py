"""Import entry points: :func:`map_resources` (a list of resources), :func:`map_bundle`.

:func:`map_bundle` reads a transaction, batch or collection Bundle.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from forecast.fhir.codes import BUNDLE_TYPES
from forecast.fhir.mapper import _Mapper
from forecast.fhir.questionnaires import questionnaire_keys
from forecast.fhir.results import FhirError, FhirIssue, MappedRecords, _validation_issues
from forecast.fhir.triage import ignore_reason, raw_form_keys
from forecast.fhir.values import _restful_id
from forecast.fhir.versions import resource_version_issues, version_issues


def _lenient(raw: Mapping[str, Any], expr: str, m: _Mapper) -> dict[str, Any]:
    """Accept ``Observation.valueDecimal`` (seen in the wild, not an R4 element).

    R4 Observations have no ``valueDecimal``; some senders use it for scores.
    It is read as ``valueQuantity`` (same number, no unit) with a warning, on
    the Observation and on its components.
    """
    out = dict(raw)
    if out.get("resourceType") != "Observation":
        return out
    holders = [("", out)]
    if isinstance(out.get("component"), list):
        out["component"] = [dict(c) if isinstance(c, Mapping) else c for c in out["component"]]
        holders += [
            (f".component[{k}]", c) for k, c in enumerate(out["component"]) if isinstance(c, dict)
        ]
    for sub, h in holders:
        if "valueDecimal" in h and not any(
            k.startswith("value") and k != "valueDecimal" for k in h
        ):
            h["valueQuantity"] = {"value": h.pop("valueDecimal")}
            m.warn(
                "invalid",
                "valueDecimal is not an element of an R4 Observation; read as valueQuantity",
                f"{expr}{sub}.valueDecimal",
            )
    return out


_HANDLED = ("Patient", "QuestionnaireResponse", "Observation", "Procedure", "Questionnaire")


def map_resources(
    resources: Sequence[Mapping[str, Any]],
    *,
    expressions: Sequence[str] | None = None,
    full_urls: Sequence[str | None] | None = None,
    known_first_session: Mapping[str, Any] | None = None,
    known_patients: Collection[str] | None = None,
    questionnaires: Sequence[Any] = (),
) -> MappedRecords:
    """Validate FHIR resources with fhir.resources and map them to contract records.

    Parameters
    ----------
    resources : sequence of dict
        Resources as JSON objects (Patient, QuestionnaireResponse,
        Observation, Procedure; other types are ignored with a warning).
    expressions : sequence of str, optional
        FHIRPath of each resource for messages; default ``Bundle.entry[i].resource``.
    full_urls : sequence of str or None, optional
        The entries' ``fullUrl`` (resolves ``urn:uuid:`` references).
    known_first_session : mapping, optional
        ``patient_id`` -> date of the first session already on record, so a
        session of unstated kind is an induction only if it is the first ever.
    known_patients : collection of str, optional
        Patients already on record. When given, a resource whose subject is
        neither a Patient of ``resources`` nor one of these is an error naming
        its ``subject``; when None (no store to ask) such a patient is new.
    questionnaires : sequence
        Questionnaires known to the caller (parsed resources or JSON
        objects, e.g. :func:`load_questionnaires`), besides those among
        ``resources``: a QuestionnaireResponse naming one is read through
        its items' codes (:class:`QuestionnaireMap`).

    Returns
    -------
    MappedRecords

    Raises
    ------
    FhirError
        With every error found (structure, codes of required bindings, values,
        unknown patients, disagreements).
    """
    n = len(resources)
    exprs = list(expressions or [f"Bundle.entry[{i}].resource" for i in range(n)])
    urls = list(full_urls or [None] * n)
    m = _Mapper(known_first_session, known_patients)
    parsed, present = _parse_resources(m, resources, exprs, urls, questionnaires)
    results = _map_parsed(m, parsed, exprs, urls, questionnaires)
    _warn_absent_members(m, parsed, present, exprs)
    _link_panels(m, results, exprs, urls)
    out = m.finish()
    if m.errors:
        raise FhirError(m.errors + out.issues)
    out.entries = [(t or "", cid) for t, cid in results]
    return out


def _form_keys(
    resources: Sequence[Mapping[str, Any]],
    urls: Sequence[str | None],
    questionnaires: Sequence[Any],
) -> set[str]:
    """References of every Questionnaire known: the caller's and the input's own."""
    keys: set[str] = set()
    for q in questionnaires:
        keys.update(raw_form_keys(q) if isinstance(q, Mapping) else questionnaire_keys(q))
    for raw, url in zip(resources, urls, strict=True):
        if isinstance(raw, Mapping) and raw.get("resourceType") == "Questionnaire":
            keys.update(raw_form_keys(raw, url))
    return keys


def _parse_resources(
    m: _Mapper,
    resources: Sequence[Mapping[str, Any]],
    exprs: Sequence[str],
    urls: Sequence[str | None],
    questionnaires: Sequence[Any] = (),
) -> tuple[list[Any], set[str]]:
    """Validate each resource that is read (None where it is not) with fhir.resources.

    A resource the service does not import is checked only for its type and
    what decides that it is not imported (:func:`forecast.fhir.triage.ignore_reason`),
    so an invalid element elsewhere in it cannot fail the Bundle. Returns the
    parsed resources and the references (``Type/id``, fullUrl) of every entry.
    """
    from fhir.resources.R4B import get_fhir_model_class

    n = len(resources)
    parsed: list[Any] = [None] * n
    present: set[str] = set()
    forms = _form_keys(resources, urls, questionnaires)
    for i, raw in enumerate(resources):
        rtype = raw.get("resourceType") if isinstance(raw, Mapping) else None
        if not isinstance(raw, Mapping) or not rtype or not isinstance(rtype, str):
            m.error("required", "resource has no resourceType", exprs[i])
            continue
        if isinstance(raw.get("id"), str):
            present.add(f"{rtype}/{raw['id']}")
        if urls[i]:
            present.add(str(urls[i]))
        older = resource_version_issues(raw, exprs[i])
        if older:
            m.errors.extend(older)
            continue
        if rtype not in _HANDLED:
            try:
                get_fhir_model_class(rtype)
            except (ValueError, KeyError):
                m.error("not-supported", f"{rtype!r} is not a FHIR R4 resource type", exprs[i])
                continue
            m.warn("not-supported", f"{rtype} resources are not imported; ignored", exprs[i])
            continue
        reason = ignore_reason(raw, forms)
        if reason is not None:
            element = ".code" if rtype in ("Observation", "Procedure") else ""
            m.warn("not-supported", reason, exprs[i] + element)
            continue
        raw = _lenient(raw, exprs[i], m)
        try:
            parsed[i] = get_fhir_model_class(rtype).model_validate(raw)
        except ValidationError as err:
            m.errors.extend(_validation_issues(err, exprs[i]))
            continue
        if urls[i]:
            m.full_urls[urls[i]] = f"{rtype}/{parsed[i].id or urls[i]}"
            if rtype == "Patient":
                pid = parsed[i].id or _restful_id(urls[i], "Patient")
                if pid is not None:
                    m.patient_full_urls[urls[i]] = pid
    return parsed, present


def _map_parsed(
    m: _Mapper,
    parsed: Sequence[Any],
    exprs: Sequence[str],
    urls: Sequence[str | None],
    questionnaires: Sequence[Any],
) -> list[tuple[str, str | None]]:
    """Map parsed resources in dependency order; (type, client id) per resource."""
    from fhir.resources.R4B import get_fhir_model_class

    n = len(parsed)
    # Questionnaires first (the caller's, then the Bundle's own), so responses can use them.
    for res in questionnaires:
        m.register_form(
            res
            if not isinstance(res, Mapping)
            else get_fhir_model_class("Questionnaire").model_validate(res)
        )
    results: list[tuple[str, str | None]] = [("", None)] * n
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "Questionnaire":
            m.add_questionnaire(res, exprs[i], urls[i])
            results[i] = ("Questionnaire", None)
    # Patients next, so references through fullUrl resolve and covariates attach.
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "Patient":
            results[i] = m.patient(res, exprs[i], urls[i])
    # Responses next, so Observations derivedFrom them can join their row.
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "QuestionnaireResponse":
            results[i] = m.questionnaire_response(res, exprs[i], urls[i])
    derived: dict[str, tuple[str, dt.date]] = {}
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "QuestionnaireResponse":
            cid = results[i][1]
            if cid is not None and cid in m.by_resource:
                derived[cid] = m.by_resource[cid]
                if urls[i]:
                    derived[urls[i]] = m.by_resource[cid]
    for i, res in enumerate(parsed):
        if res is None:
            continue
        rtype = res.get_resource_type()
        if rtype == "Observation":
            results[i] = m.observation(res, exprs[i], urls[i], derived)
        elif rtype == "Procedure":
            results[i] = m.procedure(res, exprs[i], urls[i])
    return results


def _warn_absent_members(
    m: _Mapper,
    parsed: Sequence[Any],
    present: set[str],
    exprs: Sequence[str],
) -> None:
    """Warn about hasMember references to no entry of the input (they cannot be followed).

    A member that is an entry but was not read (the PHQ-9 difficulty question,
    say) is in the Bundle: it is not reported as missing.
    """
    for i, res in enumerate(parsed):
        if res is not None and res.get_resource_type() == "Observation":
            for k, ref in enumerate(res.hasMember or []):
                r = ref.reference or ""
                if r in present or any(p.endswith("/" + r) for p in present):
                    continue
                if any(r.endswith("/" + p) for p in present if "/" in p):
                    continue
                m.warn(
                    "not-found",
                    f"hasMember {r!r} is not in this Bundle; send the member Observations "
                    "in the same Bundle",
                    f"{exprs[i]}.hasMember[{k}]",
                )


def _link_panels(
    m: _Mapper,
    results: list[tuple[str, str | None]],
    exprs: Sequence[str],
    urls: Sequence[str | None],
) -> None:
    """A panel carrying no value itself joins the row of its members (for its answer entry).

    A panel none of whose members became part of a row imported nothing: its
    entry says so (no id), after the warnings about its members.
    """
    if not m.panels:
        return
    entry_of: dict[str, str] = {}
    for i, (_, cid) in enumerate(results):
        if cid:
            entry_of[cid] = exprs[i]
        if urls[i]:
            entry_of[str(urls[i])] = exprs[i]
    index = {e: i for i, e in enumerate(exprs)}
    for expr, refs in m.panels:
        members = {entry_of[r] for r in refs if r in entry_of}
        members |= {
            e for r in refs for cid, e in entry_of.items() if cid.endswith("/" + r) or
            r.endswith("/" + cid)
        }
        rows = [row for row in m.rows.values() if members & set(row.exprs)]
        for row in rows:
            row.exprs.append(expr)
            if members & row.phq_exprs:
                row.phq_exprs.add(expr)
        if not rows:
            results[index[expr]] = ("Observation", None)
            m.warn(
                "not-supported",
                "nothing imported from this panel: none of its hasMember Observations was read",
                expr,
            )


def _entry_resources(entries: list[Any]) -> list[Any]:
    """The resource of each entry; raise FhirError for a missing resource or unsupported method."""
    resources = []
    for i, e in enumerate(entries):
        res = e.get("resource")
        if res is None:
            raise FhirError(
                [FhirIssue("error", "required", "entry has no resource", f"Bundle.entry[{i}]")]
            )
        req = e.get("request") or {}
        if req.get("method") not in (None, "POST", "PUT"):
            raise FhirError(
                [
                    FhirIssue(
                        "error",
                        "not-supported",
                        f"request.method {req.get('method')!r} is not supported; use POST or PUT",
                        f"Bundle.entry[{i}].request.method",
                    )
                ]
            )
        resources.append(res)
    return resources


def map_bundle(
    bundle: Any,
    *,
    known_first_session: Mapping[str, Any] | None = None,
    known_patients: Collection[str] | None = None,
    types: Iterable[str] = BUNDLE_TYPES,
    questionnaires: Sequence[Any] = (),
) -> MappedRecords:
    """Validate a Bundle (transaction, batch or collection) and map its entries.

    ``known_first_session``, ``known_patients`` and ``questionnaires`` are
    passed to :func:`map_resources`.

    Raises
    ------
    FhirError
        When the Bundle or any entry is invalid; nothing is returned then.
    """
    from fhir.resources.R4B.bundle import Bundle

    types = tuple(types)
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        got = bundle.get("resourceType") if isinstance(bundle, Mapping) else type(bundle).__name__
        raise FhirError(
            [FhirIssue("error", "structure", f"expected a Bundle resource; got {got!r}", "Bundle")]
        )
    # An STU3 or DSTU2 Bundle is refused as a whole, naming the version seen,
    # before any element of it is read as R4 (never a partial import).
    older = version_issues(bundle)
    if older:
        raise FhirError(older)
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(
            [FhirIssue("error", "structure", "Bundle.entry must be a list", "Bundle.entry")]
        )
    # Validate the Bundle's own structure without the resources, which are
    # validated one by one below so that each error names its entry.
    shell = dict(bundle)
    shell["entry"] = [
        {k: v for k, v in e.items() if k != "resource"} if isinstance(e, Mapping) else e
        for e in entries
    ]
    try:
        Bundle.model_validate(shell)
    except ValidationError as err:
        raise FhirError(_validation_issues(err, "Bundle")) from None
    if bundle.get("type") not in types:
        raise FhirError(
            [
                FhirIssue(
                    "error",
                    "not-supported",
                    f"Bundle.type {bundle.get('type')!r} is not accepted here; allowed: "
                    + ", ".join(sorted(types)),
                    "Bundle.type",
                )
            ]
        )
    resources = _entry_resources(entries)
    return map_resources(
        resources,
        full_urls=[e.get("fullUrl") for e in entries],
        known_first_session=known_first_session,
        known_patients=known_patients,
        questionnaires=questionnaires,
    )
