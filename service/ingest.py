"""Idempotent, all-or-nothing ingestion of patients, sessions and assessments.

:func:`ingest_many` is the one write path of the JSON API and the FHIR
importer. Within ONE write transaction it

1. upserts the given patients (validated by ``forecast.data.validate_patient``);
2. locks the patients touched (PostgreSQL; SQLite holds its write lock) and
   checks that their stored rows are still those the plan was made against;
3. inserts the planned rows, or nothing at all if any item failed.

The plan is made *before* the write transaction (validation is the slow part
and must not hold the database's write lock): the items are validated with
``forecast.data.validate_records_many`` (one vectorised pass per table, the
same rules as ``validate_records``) against the stored rows, so
a new row dated like a stored one is an error, and client ids are matched: a
stored id with the same content is *unchanged*, with other content a
*conflict* (409 naming the item). If another writer changed the patients'
rows in between, the plan is made again inside the write transaction.

Validation problems (422) take precedence over conflicts (409); both are one
:class:`service.errors.ApiProblem` listing every failing field. A concurrent
writer inserting the same key first makes the transaction run again (it then
finds the row stored and reports it unchanged).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection

from forecast.data import (
    MAX_CLIENT_ID_LENGTH,
    RecordsOf,
    validate_patient,
    validate_records_many,
)
from service.errors import ApiProblem, field_errors, pointer
from service.store import Store, row_hash

TABLES_WRITABLE = ("sessions", "assessments")
PATIENT_ID_MAX = 128


@dataclass(frozen=True)
class IngestItem:
    """Rows of one table for one patient.

    Attributes
    ----------
    patient_id : str
    table : {"sessions", "assessments"}
    records : list of dict
        JSON objects: contract columns minus ``patient_id``, optional ``id``.
    pointer : str
        JSON pointer of the list in the request, used in error ``field``s
        (e.g. ``/assessments``; the FHIR importer may name bundle entries).
    """

    patient_id: str
    table: str
    records: Sequence[Any]
    pointer: str


@dataclass(frozen=True)
class Retraction:
    """A stored row withdrawn as entered in error (FHIR ``status = entered-in-error``).

    Attributes
    ----------
    patient_id : str
    table : {"sessions", "assessments"}
    client_id : str
        The client id the row was imported with (``"<ResourceType>/<id>"``).
    pointer : str
        Where the request names it, for errors and results.
    """

    patient_id: str
    table: str
    client_id: str
    pointer: str


def check_patient_id(patient_id: Any, field: str = "/patient_id") -> str:
    """A usable patient id (non-empty text, at most 128 characters, printable).

    Raises
    ------
    ApiProblem
        422 naming ``field``.
    """
    ok = (
        isinstance(patient_id, str)
        and 0 < len(patient_id) <= PATIENT_ID_MAX
        and patient_id.strip() == patient_id
        and patient_id.isprintable()
    )
    if not ok:
        raise ApiProblem(
            422,
            "Invalid patient id",
            errors=[
                {
                    "field": field,
                    "message": f"allowed: 1 to {PATIENT_ID_MAX} printable characters "
                    "without surrounding spaces",
                }
            ],
        )
    return patient_id


def _items(raw: Sequence[Any]) -> list[IngestItem]:
    out: list[IngestItem] = []
    for k, entry in enumerate(raw):
        if isinstance(entry, IngestItem):
            item = entry
        elif isinstance(entry, Mapping):
            item = IngestItem(
                entry["patient_id"],
                entry["table"],
                entry["records"],
                entry.get("pointer") or "",
            )
        else:
            parts = tuple(entry)
            item = IngestItem(parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else "")
        if item.table not in TABLES_WRITABLE:
            raise ValueError(
                f"item {k}: table must be one of {TABLES_WRITABLE}, got {item.table!r}"
            )
        if not item.pointer:
            single = len(raw) == 1
            item = IngestItem(
                item.patient_id,
                item.table,
                item.records,
                pointer(item.table) if single else pointer("items", k, "records"),
            )
        out.append(item)
    return out


def _unwrap(rec: Any) -> Any:
    """The patient record of a ``{"record": ..., "pointer": ...}`` wrapper (else itself)."""
    if isinstance(rec, Mapping) and "pointer" in rec and "record" in rec:
        return rec["record"]
    return rec


def _patient_records(
    patients: Sequence[Any] | None, covariates: Sequence[str] = ()
) -> tuple[list[tuple[dict[str, Any], str]], list[dict[str, str]]]:
    """Validate patient records: (canonical record, pointer) pairs and field errors."""
    out: list[tuple[dict[str, Any], str]] = []
    errors: list[dict[str, str]] = []
    seen: set[str] = set()
    for j, rec in enumerate(patients or ()):
        where = pointer("patients", j)
        if isinstance(rec, Mapping) and "pointer" in rec and "record" in rec:
            where = str(rec["pointer"])
        rec = _unwrap(rec)
        pid = rec.get("patient_id") if isinstance(rec, Mapping) else None
        try:
            check_patient_id(pid, where + "/patient_id")
        except ApiProblem as exc:
            errors += exc.errors
            continue
        if pid in seen:
            errors.append(
                {"field": where + "/patient_id", "message": "duplicate patient in the request"}
            )
            continue
        seen.add(pid)
        row, problems = validate_patient(rec, patient_id=pid, covariates=covariates,
                                         as_record=True)
        if problems:
            errors += field_errors(problems, where)
            continue
        out.append((row, where))
    return out, errors


@dataclass
class _Plan:
    """What one ingest will write, computed against a snapshot of the stored rows."""

    plans: list[tuple[IngestItem, list[dict[str, Any]], list[dict[str, Any]]]]
    snapshot: dict[str, dict[str, tuple[int, int]]]
    #: Per retraction: what to do (retracted / recorded / already retracted / kept)
    #: and the stored row it concerns (``Store.locate``; with ``missing`` when kept).
    decisions: list[tuple[Retraction, str, dict[str, Any] | None]]


def _retractions(raw: Sequence[Any] | None) -> tuple[list[Retraction], list[dict[str, str]]]:
    """Parse retractions (``Retraction`` or mappings ``patient_id, table, id[, pointer]``)."""
    out: list[Retraction] = []
    errors: list[dict[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for k, entry in enumerate(raw or ()):
        if isinstance(entry, Retraction):
            r = entry
        else:
            r = Retraction(
                entry.get("patient_id"),
                entry.get("table"),
                entry.get("id"),
                entry.get("pointer") or pointer("retractions", k),
            )
        if r.table not in TABLES_WRITABLE:
            errors.append(
                {"field": r.pointer + "/table", "message": f"must be one of {TABLES_WRITABLE}"}
            )
            continue
        if (not isinstance(r.client_id, str) or not r.client_id.strip()
                or len(r.client_id) > MAX_CLIENT_ID_LENGTH):
            errors.append({"field": r.pointer + "/id",
                           "message": "the id the row was stored with (1 to "
                           f"{MAX_CLIENT_ID_LENGTH} characters)"})
            continue
        try:
            check_patient_id(r.patient_id, r.pointer + "/patient_id")
        except ApiProblem as exc:
            errors += exc.errors
            continue
        key = (r.patient_id, r.table, r.client_id)
        if key not in seen:  # the same withdrawal twice in one request is one withdrawal
            seen.add(key)
            out.append(r)
    return out, errors


def _plan(
    store: Store,
    conn: Connection,
    items: list[IngestItem],
    new_patients: set[str],
    today: dt.date | None,
    prior_errors: Sequence[dict[str, str]] = (),
    retractions: Sequence[Retraction] = (),
    sources: Mapping[tuple[str, str, str], Sequence[str]] | None = None,
) -> _Plan:
    """Validate every item against the stored rows read through ``conn``.

    Raises the 422 (validation) or 409 (conflicting retry) problem; otherwise
    returns the rows to insert, the per-item results and the snapshot of the
    stored rows the decision was based on.

    A record whose client id was withdrawn as entered in error (stored
    tombstone, or a retraction in this request) is not inserted: its result
    is ``retracted``. A row withdrawn in this request no longer occupies its
    date, so a correction dated the same day can come in the same request.

    A stored row that also holds other resources' values (merged on import,
    ``sources``) is deleted only when each of those resources is sent again
    or withdrawn in the same request; otherwise it is ``kept``, so that no
    accepted value (a C-SSRS answer beside a wrong PHQ-9, say) is lost.
    """
    ids = sorted({it.patient_id for it in items} | {r.patient_id for r in retractions})
    known = store.known_patients(conn, ids) | new_patients
    tables = sorted({it.table for it in items} | {r.table for r in retractions})
    snapshot = {t: store.history_fingerprint(conn, t, ids) for t in tables}
    tombs, snapshot["retractions"] = store.tombstones(conn, ids)
    withdrawn = {t: tombs.get(t, {}) for t in tables}
    retraction_errors = [
        {
            "field": r.pointer + "/patient_id",
            "message": f"unknown patient {r.patient_id!r}: nothing of it is stored to retract",
        }
        for r in retractions
        if r.patient_id not in known
    ]
    present = _present_resources(items, retractions, sources)
    decisions, freed = _decide_retractions(
        store, conn, retractions, known, withdrawn, present, tables
    )
    stored = _stored_rows(store, conn, tables, ids)
    # Problems of the patients come first, then those of the rows: one 422 lists all.
    errors: list[dict[str, str]] = list(prior_errors) + retraction_errors
    conflicts: list[dict[str, str]] = []
    # Every item of a table is validated in one pass of the data contract's rules.
    entries, position, kept_of = _validation_entries(items, stored, withdrawn, freed, known, tables)
    checked = {
        t: validate_records_many(t, entries[t], today=today, as_rows=True) if entries[t] else []
        for t in tables
    }
    plans = _plan_items(items, position, kept_of, checked, stored, freed, errors, conflicts)
    if errors:
        raise ApiProblem(
            422, "Invalid data", f"{len(errors)} problem(s) in the submitted rows", errors
        )
    if conflicts:
        raise ApiProblem(
            409,
            "Conflicting retry",
            f"{len(conflicts)} item(s) reuse a stored id with other content; nothing was stored",
            conflicts,
        )
    return _Plan(plans, snapshot, decisions)


def _plan_items(
    items: Sequence[IngestItem],
    position: Sequence[tuple[str, int]],
    kept_of: Sequence[np.ndarray],
    checked: Mapping[str, Sequence[Any]],
    stored: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
    freed: dict[str, dict[str, set[str]]],
    errors: list[dict[str, str]],
    conflicts: list[dict[str, str]],
) -> list[tuple[IngestItem, list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per item: the rows to insert and per-record results (appends to errors/conflicts)."""
    plans: list[tuple[IngestItem, list[dict[str, Any]], list[dict[str, Any]]]] = []
    for it, (table, k), kept in zip(items, position, kept_of, strict=True):
        rows, problems, order = checked[table][k]
        if problems:
            errors += field_errors(
                [p if p.row is None else replace(p, row=int(kept[p.row])) for p in problems],
                it.pointer,
            )
            continue
        validated = set(kept.tolist())
        withdrawn_results = [
            {
                "index": i,
                "id": r["id"],
                "date": str(r.get("date"))[:10] if r.get("date") is not None else None,
                "result": "retracted",  # withdrawn as entered in error: never stored again
            }
            for i, r in enumerate(it.records)
            if i not in validated
        ]
        if not rows:
            plans.append((it, [], withdrawn_results))
            continue
        inserts, results, clashes = _row_results(
            it, rows, order, kept, stored.get((it.table, it.patient_id)), freed
        )
        conflicts += clashes
        results = sorted(results + withdrawn_results, key=lambda e: e["index"])
        plans.append((it, inserts, results))
    return plans


def _validation_entries(
    items: Sequence[IngestItem],
    stored: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
    withdrawn: dict[str, dict[str, set[str]]],
    freed: dict[str, dict[str, set[str]]],
    known: set[str],
    tables: Sequence[str],
) -> tuple[dict[str, list[RecordsOf]], list[tuple[str, int]], list[np.ndarray]]:
    """The records of every item to validate, per table, with the stored rows they meet.

    Returns the entries per table, each item's (table, position) among them and,
    per item, the posted index of each record to validate.
    """
    entries: dict[str, list[RecordsOf]] = {t: [] for t in tables}
    position: list[tuple[str, int]] = []
    kept_of: list[np.ndarray] = []  # per item: posted index of each validated record
    for it in items:
        existing = None
        found = stored.get((it.table, it.patient_id))
        if found is not None:
            batch_ids = {
                r.get("id")
                for r in it.records
                if isinstance(r, Mapping) and isinstance(r.get("id"), str)
            }
            batch_ids |= withdrawn[it.table].get(it.patient_id, set())
            batch_ids |= freed[it.table].get(it.patient_id, set())
            # Rows retried in this batch must not count as duplicates of themselves,
            # nor rows withdrawn in this request as taking their date.
            keep = np.array([c not in batch_ids for c in found[1]], dtype=bool)
            existing = {"date": found[0][keep], "client_id": found[1][keep]}
        # Records of withdrawn ids are not validated again (a retry of the request that
        # first sent them may now clash with the correction stored on their date).
        gone = withdrawn[it.table].get(it.patient_id, set())
        records = list(it.records)
        kept = [
            i
            for i, r in enumerate(records)
            if not (isinstance(r, Mapping) and isinstance(r.get("id"), str) and r["id"] in gone)
        ]
        position.append((it.table, len(entries[it.table])))
        kept_of.append(np.asarray(kept, dtype=np.intp))
        entries[it.table].append(
            RecordsOf(it.patient_id, [records[i] for i in kept], it.patient_id in known, existing)
        )
    return entries, position, kept_of


def _present_resources(
    items: Sequence[IngestItem],
    retractions: Sequence[Retraction],
    sources: Mapping[tuple[str, str, str], Sequence[str]] | None,
) -> dict[tuple[str, str], set[str]]:
    """Resources present in this request, per (table, patient): sent or withdrawn.

    Sent means as records or merged into one. A merged row may go only when all
    it holds is here.
    """
    present: dict[tuple[str, str], set[str]] = {}
    for it in items:
        bucket = present.setdefault((it.table, it.patient_id), set())
        bucket.update(
            r["id"] for r in it.records if isinstance(r, Mapping) and isinstance(r.get("id"), str)
        )
    for (pid, table, _), merged in (sources or {}).items():
        present.setdefault((table, pid), set()).update(merged)
    for r in retractions:
        present.setdefault((r.table, r.patient_id), set()).add(r.client_id)
    return present


def _decide_retractions(
    store: Store,
    conn: Connection,
    retractions: Sequence[Retraction],
    known: set[str],
    withdrawn: dict[str, dict[str, set[str]]],
    present: dict[tuple[str, str], set[str]],
    tables: Sequence[str],
) -> tuple[list[tuple[Retraction, str, dict[str, Any] | None]], dict[str, dict[str, set[str]]]]:
    """What becomes of each retraction, and the stored rows it deletes (``freed``).

    ``withdrawn`` (stored tombstones per table and patient) gains the ids
    withdrawn in this request.
    """
    decisions: list[tuple[Retraction, str, dict[str, Any] | None]] = []
    freed: dict[str, dict[str, set[str]]] = {t: {} for t in tables}  # rows deleted here
    for r in retractions:
        if r.patient_id not in known:
            continue
        if r.client_id in withdrawn[r.table].get(r.patient_id, ()):
            date = store.withdrawn_date(conn, r.table, r.patient_id, r.client_id)
            decisions.append((r, "already retracted", {"date": date}))
            continue
        loc = store.locate(conn, r.table, r.patient_id, r.client_id)
        if loc is not None:
            missing = [o for o in loc["others"] if o not in present[(r.table, r.patient_id)]]
            if missing:
                decisions.append((r, "kept", {**loc, "missing": missing}))
                continue
            freed[r.table].setdefault(r.patient_id, set()).add(loc["client_id"])
        decisions.append((r, "recorded" if loc is None else "retracted", loc))
    for r, action, _ in decisions:
        if action != "kept":
            withdrawn[r.table].setdefault(r.patient_id, set()).add(r.client_id)
    return decisions, freed


def _stored_rows(
    store: Store, conn: Connection, tables: Sequence[str], ids: Sequence[str]
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each patient's stored rows as arrays: dates, client ids, content hashes."""
    stored: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for table in tables:
        frame = store.history(conn, table, ids, with_ids=True)
        if not len(frame):
            continue
        # Rows are sorted by patient: slice each patient's block instead of grouping.
        pids = frame["patient_id"].to_numpy(dtype=object)
        dates = frame["date"].to_numpy(dtype="datetime64[ns]")
        cids = frame["client_id"].to_numpy(dtype=object)
        hashes = frame["content_hash"].to_numpy(dtype=object)
        starts = np.flatnonzero(np.r_[True, pids[1:] != pids[:-1]])
        ends = np.r_[starts[1:], len(pids)]
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            stored[(table, str(pids[lo]))] = (dates[lo:hi], cids[lo:hi], hashes[lo:hi])
    return stored


def _row_results(
    it: IngestItem,
    rows: list[dict[str, Any]],
    order: Any,
    kept: np.ndarray,
    found: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    freed: dict[str, dict[str, set[str]]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, str]]]:
    """The rows of one item to insert, its per-record results and its conflicting retries.

    ``found`` is the patient's stored rows of the table (:func:`_stored_rows`).
    """
    conflicts: list[dict[str, str]] = []
    stored_hash: dict[str, str] = {}
    if found is not None:
        # A row deleted by a withdrawal here is no longer stored: its id is new again.
        gone_rows = freed[it.table].get(it.patient_id, set())
        stored_hash = {
            str(c): h
            for c, h in zip(found[1], found[2], strict=True)
            if c is not None and c not in gone_rows
        }
    inserts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = [{} for _ in rows]
    for j, row in enumerate(rows):
        index = int(kept[int(order[j])])
        digest = row_hash(it.table, row)
        cid = row.get("client_id")
        entry = {
            "index": index,
            "id": cid,
            "date": row["date"].strftime("%Y-%m-%d"),
        }
        if cid is not None and cid in stored_hash:
            if stored_hash[cid] != digest:
                conflicts.append(
                    {
                        "field": f"{it.pointer}/{index}/id",
                        "message": f"id {cid!r} is already stored with different content; "
                        "a stored row is never changed by a retry: send a new id",
                    }
                )
            entry["result"] = "unchanged"
        else:
            entry["result"] = "created"
            inserts.append({**row, "content_hash": digest})
        results[j] = entry
    return inserts, results, conflicts


def _apply_retractions(
    store: Store,
    conn: Connection,
    decisions: Sequence[tuple[Retraction, str, dict[str, Any] | None]],
    actor: str | None,
) -> list[dict[str, Any]]:
    """Carry out the planned withdrawals; one result entry per retraction."""
    out_retractions = []
    for r, action, loc in decisions:
        if action in ("retracted", "recorded"):
            store.retract(conn, r.table, r.patient_id, r.client_id,
                          loc if action == "retracted" else None, by=actor)
        done: dict[str, Any] = {"patient_id": r.patient_id, "table": r.table, "id": r.client_id,
                                "pointer": r.pointer, "result": action,
                                "date": None if loc is None else loc["date"]}
        if action == "kept" and loc is not None:
            done["missing"] = loc["missing"]
        out_retractions.append(done)
    return out_retractions


def _insert_planned_rows(
    store: Store,
    conn: Connection,
    plan: _Plan,
    sources: Mapping[tuple[str, str, str], Sequence[str]] | None,
) -> None:
    """Insert the planned rows, one multi-row insert per table, and their merged sources."""
    # One multi-row insert per table (rows in plan order, so row ids are as before).
    by_table: dict[str, list[dict[str, Any]]] = {}
    for it, inserts, _ in plan.plans:
        by_table.setdefault(it.table, []).extend(inserts)
    for table, inserts in by_table.items():
        store.insert_history(conn, table, inserts)
    if sources:
        merged = [
            (it.patient_id, it.table, row["client_id"], s)
            for it, inserts, _ in plan.plans
            for row in inserts
            for s in sources.get((it.patient_id, it.table, row.get("client_id")), ())
        ]
        for table in {m[1] for m in merged}:
            store.add_row_sources(conn, table, [(p, c, s) for p, t, c, s in merged if t == table])


def _apply(
    store: Store,
    conn: Connection,
    items: list[IngestItem],
    patients: list[tuple[dict[str, Any], str]],
    plan: _Plan | None,
    today: dt.date | None,
    retractions: Sequence[Retraction] = (),
    sources: Mapping[tuple[str, str, str], Sequence[str]] | None = None,
    actor: str | None = None,
    audit: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the plan in the open write transaction, re-planning if the rows changed."""
    patient_results = [
        {"patient_id": rec["patient_id"], "result": store.upsert_patient(conn, rec)}
        for rec, _ in patients
    ]
    ids = sorted({it.patient_id for it in items} | {r.patient_id for r in retractions})
    store.lock_patients(conn, ids)

    def fingerprint(table: str) -> dict[str, tuple[int, int]]:
        if table == "retractions":
            return store.retraction_fingerprint(conn, ids)
        return store.history_fingerprint(conn, table, ids)

    if plan is None or any(fingerprint(t) != before for t, before in plan.snapshot.items()):
        # Another writer stored rows of these patients since the plan was made:
        # decide again, now under the lock, so the answer reflects what is stored.
        plan = _plan(store, conn, items, set(), today, retractions=retractions, sources=sources)
    out_items = []
    created = unchanged = 0
    # Withdrawals first: a correction may take the date of the row it replaces.
    out_retractions = _apply_retractions(store, conn, plan.decisions, actor)
    _insert_planned_rows(store, conn, plan, sources)
    refused = 0
    for it, _, results in plan.plans:
        n_new = sum(r["result"] == "created" for r in results)
        n_refused = sum(r["result"] == "retracted" for r in results)
        created += n_new
        refused += n_refused
        unchanged += len(results) - n_new - n_refused
        out_items.append(
            {
                "patient_id": it.patient_id,
                "table": it.table,
                "pointer": it.pointer,
                "results": results,
            }
        )
    out: dict[str, Any] = {
        "created": created,
        "unchanged": unchanged,
        "patients": patient_results,
        "items": out_items,
    }
    if refused:
        out["refused_retracted"] = refused
    if out_retractions:
        out["retractions"] = out_retractions
    if audit is not None:
        store.add_audit(_audit_rows(audit, out), conn)
    return out


def _audit_rows(audit: Mapping[str, str], out: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One audit row per patient written and per withdrawal (counts and ids, no values)."""
    counts: dict[str, dict[str, int]] = {}
    for p in out["patients"]:
        counts.setdefault(str(p["patient_id"]), {})[f"patient {p['result']}"] = 1
    for item in out["items"]:
        c = counts.setdefault(str(item["patient_id"]), {})
        for r in item["results"]:
            key = f"{item['table']} {r['result']}"
            c[key] = c.get(key, 0) + 1
    base = {
        "token_name": str(audit["actor"])[:128],
        "outcome": "ok",
        "request_id": str(audit.get("request_id", ""))[:64],
        "endpoint": str(audit.get("endpoint", ""))[:64],
    }
    rows = [
        {
            **base,
            "action": audit.get("action", "patient.write"),
            "patient_id": pid,
            "detail": ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) or None,
        }
        for pid, c in counts.items()
    ]
    rows += [
        {
            **base,
            "action": "patient.withdraw",
            "patient_id": str(r["patient_id"]),
            "detail": f"{r['table']} {r['id']}: {r['result']}",
        }
        for r in out.get("retractions", [])
    ]
    return rows


def _parse_request(
    store: Store,
    items: Sequence[Any],
    patients: Sequence[Any] | None,
    retractions: Sequence[Any] | None,
) -> tuple[
    list[IngestItem],
    list[tuple[dict[str, Any], str]],
    list[dict[str, str]],
    list[Retraction],
    set[str],
]:
    """Parse the request: items, patient records, retractions, their errors, new patients."""
    parsed_items = _items(items)
    for it in parsed_items:
        # The id's own location is the caller's (URL path, bundle entry): name the list.
        check_patient_id(it.patient_id, it.pointer or "/patient_id")
    parsed_patients, patient_errors = _patient_records(patients, store.covariates)
    parsed_retractions, retraction_errors = _retractions(retractions)
    patient_errors += retraction_errors
    # Patients given in this request count as known even if their own record is
    # invalid: its errors are reported already, "unknown patient" would be noise.
    new_patients = {rec["patient_id"] for rec, _ in parsed_patients} | {
        str(_unwrap(r).get("patient_id"))
        for r in (patients or ())
        if isinstance(_unwrap(r), Mapping)
    }
    return parsed_items, parsed_patients, patient_errors, parsed_retractions, new_patients


def ingest_many(
    store: Store,
    items: Sequence[Any],
    *,
    patients: Sequence[Any] | None = None,
    today: dt.date | None = None,
    retractions: Sequence[Any] | None = None,
    sources: Mapping[tuple[str, str, str], Sequence[str]] | None = None,
    actor: str | None = None,
    audit: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Validate and store rows of several patients and tables atomically.

    Parameters
    ----------
    store : Store
        The service store (``app.extensions["kap_store"]``).
    items : sequence
        Each an :class:`IngestItem`, a mapping with keys ``patient_id``,
        ``table``, ``records`` (and optional ``pointer``), or a tuple
        ``(patient_id, table, records[, pointer])``. Without a pointer, error
        fields read ``/<table>/<i>/<column>`` for a single item and
        ``/items/<k>/records/<i>/<column>`` otherwise.
    patients : sequence of dict, optional
        Patient records (``patient_id`` plus covariates) to create or update
        in the same transaction; error fields ``/patients/<j>/<column>`` (or
        pass ``{"record": ..., "pointer": ...}`` to name your own).
    today : datetime.date, optional
        Dates after it are rejected (default: today).
    retractions : sequence, optional
        Rows withdrawn as entered in error, in the same transaction and
        before the inserts: each a :class:`Retraction` or a mapping with
        ``patient_id``, ``table``, ``id`` (the client id) and optional
        ``pointer``. The row is deleted and a tombstone kept
        (:meth:`service.store.Store.retract`); a record sent later with that
        id is answered ``retracted`` and not stored. A row that also holds
        values of other resources (``sources``) is kept unless they are all
        in the request too (result ``kept``, with the ``missing`` ids).
    sources : mapping, optional
        ``(patient_id, table, client id) -> ids of the other resources``
        merged into that record (the FHIR importer's one row per day);
        recorded for the rows created, so a withdrawal of any of them finds
        the row.
    actor : str, optional
        Who asks (the token name), kept in the withdrawals' tombstones.
    audit : mapping, optional
        ``actor``, ``action`` (default ``patient.write``; ``fhir.import``),
        ``endpoint`` and ``request_id``: the write is audited in its own
        transaction, one row per patient written (counts of rows created and
        unchanged, never values) and one ``patient.withdraw`` row per
        withdrawal, so the audit holds exactly the writes that committed (a
        retried transaction writes them once).

    Returns
    -------
    dict
        ``created`` and ``unchanged`` counts, ``patients`` (``patient_id``,
        ``result`` = created/updated/unchanged) and ``items`` (per item:
        ``patient_id``, ``table``, ``pointer`` and ``results``, one per
        record in posted order with ``index``, ``id``, ``date``, ``result``
        = created/unchanged/retracted). With records refused because their
        id was withdrawn, ``refused_retracted`` counts them; with
        retractions, ``retractions`` lists each with ``result`` =
        retracted/already retracted/recorded/kept and the row's ``date``.

    Raises
    ------
    ApiProblem
        422 with field-level ``errors`` when any record or patient is
        invalid (including rows of unknown patients); 409 when a client id
        is reused with other content. Nothing is written in either case.
    """
    parsed_items, parsed_patients, patient_errors, parsed_retractions, new_patients = (
        _parse_request(store, items, patients, retractions)
    )
    # Validate outside the write lock (validation is the slow part), against a
    # snapshot of the stored rows; the write transaction re-checks the snapshot.
    with store.read() as conn:
        plan = _plan(
            store, conn, parsed_items, new_patients, today, patient_errors, parsed_retractions,
            sources,
        )
    return store.run_write(
        lambda conn: _apply(
            store, conn, parsed_items, parsed_patients, plan, today, parsed_retractions, sources,
            actor, audit,
        )
    )
