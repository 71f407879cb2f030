"""The mapper: parsed FHIR resources to contract rows, one resource at a time.

:class:`_Mapper` collects assessment rows (one per patient and day), sessions,
patients, retractions and issues; :meth:`_Mapper.finish` turns them into
:class:`~forecast.fhir.results.MappedRecords`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from forecast.contract import PHQ9_ITEMS
from forecast.fhir.codes import (
    _CSSRS_Q,
    _DIFFICULTY,
    _IGNORED_GROUP,
    _SCREEN_ITEMS,
    CSSRS_SHORT_LINKIDS,
    EXT_DISSOCIATION,
    EXT_DOSE,
    EXT_PSYCHOTHERAPY,
    EXT_SYSTOLIC,
    LINKID_COLUMNS,
    NOT_IMPORTED_CODES,
    OBSERVATION_CODES,
    OBSERVATION_STATUS_CODES,
    OBSERVATION_STATUSES,
    PATIENT_GENDER_CODES,
    PROCEDURE_STATUS_CODES,
    PROCEDURE_STATUSES,
    QR_STATUS_CODES,
    QR_STATUSES,
    _label,
)
from forecast.fhir.questionnaires import QuestionnaireMap, _contained_form, questionnaire_keys
from forecast.fhir.results import FhirIssue, MappedRecords
from forecast.fhir.values import (
    _as_date,
    _Bad,
    _codes,
    _item_score,
    _reference_id,
    _restful_id,
    _route,
    _session_kind,
    _total_score,
    _value_element,
    _yes_no,
    is_ketamine_procedure,
)
from forecast.instruments import (
    LOINC_CSSRS_PANEL,
    LOINC_PHQ9_PANEL,
    LOINC_PHQ9_TOTAL,
    LOINC_SYSTEM,
    MAX_MISSING_ITEMS,
    SNOMED_PHQ9_SCORE,
    SNOMED_SYSTEM,
    phq9_from_items,
)


@dataclass
class _Row:
    """One assessment row being assembled from one or more resources."""

    patient_id: str
    date: dt.date
    client_id: str
    values: dict[str, float] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # column -> expression
    exprs: list[str] = field(default_factory=list)
    priority: int = 9
    ids: list[str] = field(default_factory=list)  # client ids of the resources merged
    phq_exprs: set[str] = field(default_factory=set)  # resources that gave PHQ-9 items


class _Mapper:
    def __init__(
        self,
        known_first_session: Mapping[str, Any] | None,
        known_patients: Collection[str] | None = None,
    ):
        self.out = MappedRecords()
        #: Questionnaires known by url, url|version, Questionnaire/<id> or fullUrl.
        self.forms: dict[str, QuestionnaireMap] = {}
        # None: no store to ask (the command line), every referenced patient is new.
        self.known_patients = None if known_patients is None else frozenset(known_patients)
        self.bundle_patients: set[str] = set()
        self.errors: list[FhirIssue] = []
        self.rows: dict[tuple[str, dt.date], _Row] = {}
        self.by_resource: dict[str, tuple[str, dt.date]] = {}  # "QuestionnaireResponse/x" -> key
        self.full_urls: dict[str, str] = {}
        self.patient_full_urls: dict[str, str] = {}
        self.pending_sessions: list[tuple[dict[str, Any], bool, str]] = []
        #: Panels that carry no value of their own: (expression, hasMember references).
        self.panels: list[tuple[str, list[str]]] = []
        self.birth_dates: dict[str, tuple[dt.date, str]] = {}
        self.known_first = {
            str(k): _as_date(pd.Timestamp(v).date()) for k, v in (known_first_session or {}).items()
        }

    # -- generic ------------------------------------------------------------------
    def error(self, code: str, message: str, expr: str) -> None:
        self.errors.append(FhirIssue("error", code, message, expr))

    def warn(self, code: str, message: str, expr: str) -> None:
        self.out.issues.append(FhirIssue("warning", code, message, expr))

    def bound(self, value: str | None, allowed: frozenset[str], expr: str) -> bool:
        """Whether a code of a required binding is allowed (an error names it if not)."""
        if value is None or value in allowed:
            return True
        self.error(
            "code-invalid",
            f"got {value!r}; allowed (required value set): " + ", ".join(sorted(allowed)),
            expr,
        )
        return False

    def skip(self, rtype: str, status: str | None, expr: str, why: str) -> None:
        """Say that a valid resource is not imported because of its status (never silently)."""
        self.warn("business-rule", f"not imported: {rtype} with status {status!r}; {why}", expr)

    def questionnaire_of(self, canonical: Any) -> QuestionnaireMap | None:
        """The known Questionnaire a response names (``url``, ``url|version``, id)."""
        if not canonical:
            return None
        ref = str(canonical)
        return self.forms.get(ref) or self.forms.get(ref.split("|", 1)[0])

    def register_form(self, res: Any, full_url: str | None = None) -> QuestionnaireMap | None:
        """Know a Questionnaire by each reference to it (None: it has none)."""
        keys = questionnaire_keys(res, full_url)
        if not keys:
            return None
        form = QuestionnaireMap.of(res)
        for k in keys:
            self.forms[k] = form
        return form

    def add_questionnaire(self, res: Any, expr: str, full_url: str | None) -> None:
        form = self.register_form(res, full_url)
        if form is None:
            self.warn(
                "required", "a Questionnaire without url or id cannot be referenced; ignored", expr
            )
            return
        self.out.issues.append(
            FhirIssue(
                "information",
                "informational",
                f"Questionnaire maps {len(form.columns)} linkId(s) to PHQ-9 / C-SSRS questions"
                + (f" and scores {len(form.weights)} answer option(s)" if form.weights else "")
                + " (by its items' LOINC codes); responses naming it are read through it",
                expr,
            )
        )

    def withdraw(
        self, rtype: str, table: str, cid: str | None, res: Any, expr: str
    ) -> tuple[str, str | None]:
        """An ``entered-in-error`` resource: a retraction of its stored row, if it can have one.

        No date or content is needed (the resource is wrong, whatever it says);
        the subject names the patient. A subject that is no Patient of the
        Bundle and not stored (when the caller knows the stored patients)
        cannot have a stored row: the resource is then only listed.
        """
        reference = getattr(getattr(res, "subject", None), "reference", None)
        pid = _reference_id(reference, "Patient", self.patient_full_urls)
        unknown = pid is None or (
            self.known_patients is not None
            and pid not in self.bundle_patients
            and pid not in self.known_patients
        )
        if cid is None or unknown:
            self.skip(
                rtype,
                "entered-in-error",
                f"{expr}.status",
                "its subject is no stored patient, so there is no row to withdraw",
            )
            return rtype, None
        assert pid is not None
        self.out.retractions.append({"patient_id": pid, "table": table, "id": cid, "expr": expr})
        if pid not in self.out.patients:
            self.out.patients[pid] = {"patient_id": pid}
            self.out.patient_sources.setdefault(pid, f"{expr}.subject")
        return rtype, cid

    def client_id(self, rtype: str, res: Any, full_url: str | None, expr: str) -> str | None:
        if res.id:
            return f"{rtype}/{res.id}"
        if full_url:
            return f"{rtype}/{full_url.rsplit(':', 1)[-1].rsplit('/', 1)[-1]}"
        self.error(
            "required",
            f"{rtype} needs an id (or the entry a fullUrl) so that a retried import is "
            "recognised and not stored twice",
            f"{expr}.id",
        )
        return None

    def patient_of(self, res: Any, expr: str, element: str = "subject") -> str | None:
        ref = getattr(res, element, None)
        reference = getattr(ref, "reference", None)
        pid = _reference_id(reference, "Patient", self.patient_full_urls)
        if pid is None:
            shown = f"got {reference!r}" if reference else "missing"
            self.error(
                "required",
                f"{element} must reference the patient (Patient/<id> or the fullUrl of a Patient "
                f"entry); {shown}",
                f"{expr}.{element}",
            )
            return None
        if (
            self.known_patients is not None
            and pid not in self.bundle_patients
            and pid not in self.known_patients
        ):
            self.error(
                "not-found",
                f"{element} {reference!r}: no Patient {pid!r} is in this Bundle or already "
                "stored; send the Patient resource in the same Bundle (or import it first)",
                f"{expr}.{element}",
            )
            return None
        if pid not in self.out.patients:
            self.out.patients[pid] = {"patient_id": pid}
            self.out.patient_sources.setdefault(pid, f"{expr}.{element}")
        return pid

    def date_of(self, value: Any, expr: str, element: str) -> dt.date | None:
        d = _as_date(value)
        if d is None:
            self.error(
                "required",
                f"a full date is needed (YYYY-MM-DD or a dateTime); got {value!r}"
                if value is not None
                else "the date is missing",
                f"{expr}.{element}",
            )
        return d

    def put(
        self,
        key: tuple[str, dt.date],
        client_id: str,
        column: str,
        value: float,
        expr: str,
        priority: int,
    ) -> None:
        row = self.rows.get(key)
        if row is None:
            row = _Row(key[0], key[1], client_id, priority=priority)
            self.rows[key] = row
        elif priority < row.priority:
            row.client_id, row.priority = client_id, priority
        base = expr.split(".resource", 1)[0] + ".resource"
        if base not in row.exprs:
            row.exprs.append(base)
        if column in PHQ9_ITEMS:
            row.phq_exprs.add(base)
        if client_id not in row.ids:
            row.ids.append(client_id)
        old = row.values.get(column)
        if old is not None and old != value:
            self.error(
                "conflict",
                f"{_label(column)} is {value:g} here but {old:g} in {row.origin[column]} "
                f"(same patient and date {key[1].isoformat()}): the two resources disagree",
                expr,
            )
            return
        row.values[column] = value
        row.origin.setdefault(column, expr)

    # -- resources ----------------------------------------------------------------
    def patient(self, res: Any, expr: str, full_url: str | None) -> tuple[str, str | None]:
        # The id becomes patient_id, the key of the patient's whole history, so
        # it must be stable: an id, or a RESTful fullUrl ".../Patient/<id>". A
        # urn:uuid fullUrl is a placeholder that changes with every transaction:
        # a retried import would create a second patient.
        pid = res.id or _restful_id(full_url, "Patient")
        if pid is None:
            self.error(
                "required",
                "Patient needs an id (it becomes patient_id); a urn:uuid fullUrl is only a "
                "placeholder and cannot identify the patient across imports"
                if full_url
                else "Patient needs an id (it becomes patient_id)",
                f"{expr}.id",
            )
            return "Patient", None
        if not self.bound(res.gender, PATIENT_GENDER_CODES, f"{expr}.gender"):
            return "Patient", None
        self.bundle_patients.add(pid)
        rec = self.out.patients.setdefault(pid, {"patient_id": pid})
        self.out.patient_sources[pid] = expr
        if res.gender:
            rec["sex"] = {"female": "female", "male": "male", "other": "other"}.get(
                res.gender, "unknown"
            )
        if res.birthDate is not None:
            bd = _as_date(res.birthDate)
            if bd is not None:
                self.birth_dates[pid] = (bd, f"{expr}.birthDate")
        return "Patient", pid

    def questionnaire_response(
        self, res: Any, expr: str, full_url: str | None
    ) -> tuple[str, str | None]:
        cid = self.client_id("QuestionnaireResponse", res, full_url, expr)
        if not self.bound(res.status, QR_STATUS_CODES, f"{expr}.status"):
            return "QuestionnaireResponse", None
        if res.status == "entered-in-error":
            return self.withdraw("QuestionnaireResponse", "assessments", cid, res, expr)
        if res.status not in QR_STATUSES:
            self.skip(
                "QuestionnaireResponse",
                res.status,
                f"{expr}.status",
                "only completed or amended responses are imported",
            )
            return "QuestionnaireResponse", None
        pid = self.patient_of(res, expr)
        d = self.date_of(res.authored, expr, "authored")
        if cid is None or pid is None or d is None:
            return "QuestionnaireResponse", None
        about = str(res.questionnaire or "").lower()
        cssrs = "ssrs" in about or LOINC_CSSRS_PANEL in about
        form = self.questionnaire_of(res.questionnaire) or _contained_form(res)
        key = (pid, d)
        mapped = 0
        unknown: list[str] = []

        def walk(items: Sequence[Any], path: str) -> None:
            nonlocal mapped
            for j, it in enumerate(items or []):
                ipath = f"{path}.item[{j}]"
                link = (it.linkId or "").rsplit("/", 1)[-1].strip().lower()
                column = (
                    (form.columns.get(it.linkId or "") if form is not None else None)
                    or (CSSRS_SHORT_LINKIDS.get(link) if cssrs else None)
                    or LINKID_COLUMNS.get(link)
                )
                answers = list(it.answer or [])
                if column is None:
                    if answers:
                        unknown.append(it.linkId)
                elif column in (_DIFFICULTY, _IGNORED_GROUP) or not answers:
                    pass
                else:
                    v = self._answer_value(form, it, column, answers, ipath)
                    if v is None:
                        continue
                    mapped += 1
                    self.put(key, cid, column, v, f"{ipath}.answer[0]", 0)
                # Nested items: groups, and items nested under answers.
                walk(it.item or [], ipath)
                for k, a in enumerate(answers):
                    if a.item:
                        walk(a.item, f"{ipath}.answer[{k}]")

        walk(res.item or [], expr)
        if not self._report_unmapped(unknown, mapped, expr):
            return "QuestionnaireResponse", None
        self.by_resource[cid] = key
        return "QuestionnaireResponse", cid

    def _answer_value(
        self, form: QuestionnaireMap | None, it: Any, column: str, answers: list[Any], ipath: str
    ) -> float | None:
        """The score of a response item's one answer (None: an error says why)."""
        if len(answers) > 1:
            self.error(
                "invalid",
                f"linkId {it.linkId!r} has {len(answers)} answers; one is allowed",
                f"{ipath}.answer",
            )
            return None
        apath = f"{ipath}.answer[0]"
        weight = (
            form.weight(it.linkId or "", answers[0])
            if form is not None and column in PHQ9_ITEMS
            else None
        )
        try:
            if weight is not None:  # scored by the form's own answerOption
                if not float(weight).is_integer() or not 0 <= weight <= 3:
                    raise _Bad(
                        f"the Questionnaire scores this answer {weight:g}; a PHQ-9 "
                        "item is scored 0 to 3",
                        f"{apath}.valueCoding",
                    )
                v = float(weight)
            elif column.startswith("_cssrs") or column == "cssrs_behavior":
                v = _yes_no(answers[0], apath, codeable="valueCoding")
            elif column == "phq9_total":
                v = _total_score(answers[0], apath)
            else:
                v = _item_score(answers[0], apath, codeable="valueCoding")
        except _Bad as bad:
            self.error("value", f"linkId {it.linkId!r}: {bad}", bad.element)
            return None
        if v is None:
            self.error("value", f"linkId {it.linkId!r}: no readable answer value", apath)
        return v

    def _report_unmapped(self, unknown: list[str], mapped: int, expr: str) -> bool:
        """Warn about answers not imported; False when nothing of the response was."""
        if unknown:
            self.warn(
                "not-supported",
                "answers to linkIds not mapped to any PHQ-9 or C-SSRS question were ignored: "
                + ", ".join(repr(u) for u in unknown[:10])
                + ("" if len(unknown) <= 10 else f" and {len(unknown) - 10} more"),
                f"{expr}.item",
            )
        if mapped == 0:
            self.warn(
                "not-supported",
                "no PHQ-9 or C-SSRS answer found in this QuestionnaireResponse; nothing imported "
                "from it (see the linkId table in docs/fhir-cds.md)",
                expr,
            )
            return False
        return True

    def observation(
        self, res: Any, expr: str, full_url: str | None, derived: Mapping[str, tuple[str, dt.date]]
    ) -> tuple[str, str | None]:
        cid = self.client_id("Observation", res, full_url, expr)
        if not self.bound(res.status, OBSERVATION_STATUS_CODES, f"{expr}.status"):
            return "Observation", None
        if res.status == "entered-in-error":
            return self.withdraw("Observation", "assessments", cid, res, expr)
        if res.status not in OBSERVATION_STATUSES:
            self.skip(
                "Observation",
                res.status,
                f"{expr}.status",
                "imported statuses: " + ", ".join(sorted(OBSERVATION_STATUSES)),
            )
            return "Observation", None
        codes = _codes(res.code)
        loinc = {c for s, c in codes if s in (LOINC_SYSTEM, None)}
        snomed = {c for s, c in codes if s == SNOMED_SYSTEM}
        if SNOMED_PHQ9_SCORE in snomed:
            loinc.add(LOINC_PHQ9_TOTAL)
        column = next((OBSERVATION_CODES[c] for c in sorted(loinc) if c in OBSERVATION_CODES), None)
        is_panel = bool(loinc & {LOINC_PHQ9_PANEL, LOINC_CSSRS_PANEL})
        if column is None and not is_panel:
            known = next((NOT_IMPORTED_CODES[c] for c in loinc if c in NOT_IMPORTED_CODES), None)
            shown = ", ".join(f"{s or '?'}|{c}" for s, c in sorted(codes, key=str)) or "no coding"
            self.warn(
                "not-supported",
                f"Observation ignored: {known}"
                if known
                else f"Observation code ({shown}) is not a PHQ-9 or C-SSRS code; ignored",
                f"{expr}.code",
            )
            return "Observation", None
        pid = self.patient_of(res, expr)
        when = (
            res.effectiveDateTime
            or res.effectiveInstant
            or (res.effectivePeriod.start if res.effectivePeriod is not None else None)
        )
        d = self.date_of(when, expr, "effectiveDateTime")
        if cid is None or pid is None or d is None:
            return "Observation", None
        key = (pid, d)
        for ref in res.derivedFrom or []:
            target = derived.get(ref.reference or "")
            if target is not None:
                if target[0] != pid:
                    self.error(
                        "conflict",
                        f"derivedFrom {ref.reference} belongs to another patient",
                        f"{expr}.derivedFrom",
                    )
                    return "Observation", None
                key = target  # the response's date wins: they are one questionnaire
        before = len(self.errors)
        mapped = 0
        if column is not None:
            mapped += self._obs_value(res, column, key, cid, expr)
        for k, comp in enumerate(res.component or []):
            ccodes = {c for s, c in _codes(comp.code) if s in (LOINC_SYSTEM, None)}
            ccol = next(
                (OBSERVATION_CODES[c] for c in sorted(ccodes) if c in OBSERVATION_CODES), None
            )
            if ccol is not None:
                mapped += self._obs_value(comp, ccol, key, cid, f"{expr}.component[{k}]")
        if len(self.errors) > before:
            return "Observation", None
        if mapped == 0 and not (is_panel and res.hasMember):
            self.warn(
                "not-supported",
                "Observation has no value that could be imported",
                f"{expr}.value[x]",
            )
            return "Observation", None
        if mapped:
            self.by_resource[cid] = key
        else:  # a panel whose values are its members: it shares their row
            self.panels.append((expr, [ref.reference or "" for ref in res.hasMember or []]))
        return "Observation", cid

    def _obs_value(
        self,
        holder: Any,
        column: str,
        key: tuple[str, dt.date],
        cid: str,
        expr: str,
    ) -> int:
        try:
            if column.startswith("_cssrs") or column == "cssrs_behavior":
                v = _yes_no(holder, expr, codeable="valueCodeableConcept")
            elif column == "phq9_total":
                v = _total_score(holder, expr)
            else:
                v = _item_score(holder, expr, codeable="valueCodeableConcept")
        except _Bad as bad:
            self.error("value", str(bad), bad.element)
            return 0
        if v is None:
            absent = getattr(holder, "dataAbsentReason", None)
            if absent is None:
                self.error("required", f"no value for {column}", f"{expr}.value[x]")
            return 0
        self.put(key, cid, column, v, f"{expr}.{_value_element(holder)}", 1)
        return 1

    def procedure(self, res: Any, expr: str, full_url: str | None) -> tuple[str, str | None]:
        cid = self.client_id("Procedure", res, full_url, expr)
        if not self.bound(res.status, PROCEDURE_STATUS_CODES, f"{expr}.status"):
            return "Procedure", None
        if not is_ketamine_procedure(res):
            self.warn(
                "not-supported",
                "Procedure is not recognised as a ketamine session (see docs/fhir-cds.md for the "
                "accepted codes and texts); ignored",
                f"{expr}.code",
            )
            return "Procedure", None
        if res.status == "entered-in-error":
            return self.withdraw("Procedure", "sessions", cid, res, expr)
        if res.status not in PROCEDURE_STATUSES:
            self.skip("Procedure", res.status, f"{expr}.status", "only completed sessions count")
            return "Procedure", None
        pid = self.patient_of(res, expr)
        when = res.performedDateTime or (
            res.performedPeriod.start if res.performedPeriod is not None else None
        )
        d = self.date_of(when, expr, "performedDateTime")
        if cid is None or pid is None or d is None:
            return "Procedure", None
        rec: dict[str, Any] = {"patient_id": pid, "id": cid, "date": d.isoformat()}
        exts = {e.url: e for e in res.extension or []}
        kind = _session_kind(res, exts)
        route = _route(res, exts)
        if route is not None:
            rec["route"] = route
        for url, col in (
            (EXT_DOSE, "dose_mg_per_kg"),
            (EXT_DISSOCIATION, "dissociation"),
            (EXT_SYSTOLIC, "systolic_bp_max"),
        ):
            if url in exts:
                e = exts[url]
                val = e.valueDecimal if e.valueDecimal is not None else e.valueInteger
                rec[col] = float(val) if val is not None else None
        if EXT_PSYCHOTHERAPY in exts:
            rec["psychotherapy"] = exts[EXT_PSYCHOTHERAPY].valueBoolean
        if kind is not None:
            rec["kind"] = kind
        self.pending_sessions.append((rec, kind is None, expr))
        self.out.sources[("sessions", cid)] = [expr]
        return "Procedure", cid

    # -- finish ------------------------------------------------------------------
    def finish(self) -> MappedRecords:
        """The mapped records: sessions with their kinds, ages, assessment rows."""
        first = self._finish_sessions()
        self._set_ages(first)
        for row in self.rows.values():
            self._finish_row(row)
        self.out.assessments.sort(key=lambda r: (r["patient_id"], r["date"]))
        self.out.sessions.sort(key=lambda r: (r["patient_id"], r["date"]))
        return self.out

    def _finish_sessions(self) -> dict[str, dt.date]:
        """Give sessions without a stated kind theirs; the first session day per patient."""
        # Session kind default: the patient's first session ever is the induction,
        # every other session with no kind stated is a maintenance session.
        first: dict[str, dt.date] = {}
        for rec, _, _ in self.pending_sessions:
            d = dt.date.fromisoformat(rec["date"])
            pid = rec["patient_id"]
            first[pid] = min(first.get(pid, d), d)
        for pid, d in list(first.items()):
            known = self.known_first.get(pid)
            if known is not None and known < d:
                first[pid] = known
        for rec, default, expr in self.pending_sessions:
            if default:
                is_first = dt.date.fromisoformat(rec["date"]) == first[rec["patient_id"]]
                rec["kind"] = "induction" if is_first else "maintenance"
                self.out.issues.append(
                    FhirIssue(
                        "information",
                        "informational",
                        f"session kind not stated; recorded as {rec['kind']} "
                        + ("(the patient's first session)" if is_first else "(default)"),
                        f"{expr}.extension",
                    )
                )
            self.out.sessions.append(rec)
        return first

    def _set_ages(self, first: Mapping[str, dt.date]) -> None:
        """Age at the first session in this import (or the first stored one)."""
        for pid, (bd, expr) in self.birth_dates.items():
            f = first.get(pid) or self.known_first.get(pid)
            if f is not None:
                age = f.year - bd.year - ((f.month, f.day) < (bd.month, bd.day))
                self.out.patients[pid]["age"] = float(age)
            else:
                self.out.issues.append(
                    FhirIssue(
                        "information",
                        "informational",
                        "age not set: it is the age at the first session and no session of "
                        "the patient is known yet",
                        expr,
                    )
                )

    def _finish_row(self, row: _Row) -> None:
        """Check one assessment row, derive its C-SSRS level and record it."""
        self._check_total(row)
        # C-SSRS screener: the highest question answered "yes" (Q1-Q5) is the
        # ideation level; 0 when the questions asked were all answered "no".
        asked = [q for q in _CSSRS_Q if q in row.values]
        if asked:
            yes = [i for i, q in enumerate(_CSSRS_Q, start=1) if row.values.get(q) == 1.0]
            row.values["cssrs_ideation"] = float(max(yes) if yes else 0)
            for q in asked:
                del row.values[q]
        answered = [c for c in PHQ9_ITEMS if c in row.values]
        if (
            answered
            and len(answered) < 9 - MAX_MISSING_ITEMS
            and "phq9_total" not in row.values
            and set(answered) <= _SCREEN_ITEMS
        ):
            kept = " (item 9 is read by the safety rules)" if "phq9_9" in answered else ""
            self.warn(
                "informational",
                f"ignored as PHQ-9: item(s) {', '.join(_label(c) for c in answered)} without a "
                f"total do not make a PHQ-9; recorded as a screen without a PHQ-9 score{kept}; "
                "the models ignore it",
                row.origin[answered[0]],
            )
            self.out.screens.update(row.phq_exprs)
        rec: dict[str, Any] = {
            "patient_id": row.patient_id,
            "id": row.client_id,
            "date": row.date.isoformat(),
        }
        rec.update({k: (int(v) if float(v).is_integer() else v) for k, v in row.values.items()})
        self.out.assessments.append(rec)
        self.out.sources[("assessments", row.client_id)] = row.exprs
        others = [i for i in row.ids if i != row.client_id]
        if others:
            self.out.merged[("assessments", row.client_id)] = others

    def _check_total(self, row: _Row) -> None:
        """Items and a given total must agree (compared after prorating)."""
        if "phq9_total" not in row.values:
            return
        items = np.array([[row.values.get(c, np.nan) for c in PHQ9_ITEMS]], dtype=float)
        total, answered = phq9_from_items(items)
        if answered[0] == 0 or np.isnan(total[0]):
            return
        if total[0] != row.values["phq9_total"]:
            self.error(
                "conflict",
                f"PHQ-9 total {row.values['phq9_total']:g} (from {row.origin['phq9_total']}) does "
                f"not agree with the items, which give {total[0]:g}"
                + (" after prorating" if answered[0] < 9 else ""),
                row.origin["phq9_total"],
            )
