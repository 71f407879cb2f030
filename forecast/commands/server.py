"""``forecast serve``, ``forecast tokens create|list|revoke``, ``forecast load`` and
``forecast audit export``.

``serve`` runs the service for one user with werkzeug's threaded server
(production: gunicorn, see docs/service.md). The token commands open the same
store as the service (``FORECAST_DATABASE_URL``, else the SQLite file in the
instance folder) without loading a model. Tokens and loaded patients belong to
a clinic (``--clinic``, default ``default``); what these commands change is
audited with the actor ``cli:<command>``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import pandas as pd

from forecast.commands import models_option

if TYPE_CHECKING:
    from forecast.cohort import Cohort
    from service.store import Store

ROLE_CHOICE = click.Choice(["clinician", "researcher", "admin"])


def clinic_option(help_text: str) -> Any:
    """``--clinic C`` (default ``default``: a single-clinic deployment needs none)."""
    return click.option(
        "--clinic", default="default", show_default=True, metavar="CLINIC", help=help_text
    )


def _check_clinic(clinic: str) -> str:
    from service.store import StoreError, check_clinic

    try:
        return check_clinic(clinic)
    except StoreError as exc:
        raise click.BadParameter(str(exc), param_hint="--clinic") from None


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@models_option()
def serve(host: str, port: int, models: Path | None) -> None:
    """Serve the JSON API, FHIR, CDS Hooks and pages for a single user.

    Uses werkzeug's threaded server: fine on a laptop or for one clinician;
    run gunicorn for several users (README). SIGHUP reloads the model;
    Ctrl-C or SIGTERM stops the server.
    """
    import signal

    from werkzeug.serving import WSGIRequestHandler, make_server

    from service.app import create_app
    from service.modelstate import install_sighup

    config = {"KAP_MODELS_DIR": str(models)} if models else None
    app = create_app(config)
    install_sighup(app)

    class QuietHandler(WSGIRequestHandler):
        # werkzeug logs every request line (path and query: patient ids, dates);
        # the service's own access log names the URL rule instead.
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            return None

    server = make_server(host, port, app, threaded=True, request_handler=QuietHandler)

    def _stop(_signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever to return: call it off the main thread.
        import threading

        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    state = app.extensions["kap_model"]
    version = state.version or "none (forecast routes answer 503 until a model is trained)"
    click.echo(f"kap-forecast serving on http://{host}:{server.port}  model: {version}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.extensions["kap_store"].dispose()


@click.group("tokens")
def tokens() -> None:
    """Create, list and revoke API bearer tokens."""


def _store(covariates: tuple[str, ...] = ()) -> Store:
    # Imported here so that `forecast --help` does not load Flask and SQLAlchemy.
    from service.app import open_store

    return open_store(covariates=covariates)


@tokens.command("create")
@click.option("--role", required=True, type=ROLE_CHOICE, help="What the token may do.")
@click.option("--name", required=True, help="Unique name (shown in the audit trail).")
@clinic_option("Clinic whose patients the token sees (an admin manages that clinic).")
@click.option(
    "--expires",
    default=None,
    metavar="WHEN",
    help="When the token stops working: a duration (90d, 12h) or a UTC date/time "
    "(2027-01-31, 2027-01-31T18:00). Default: until revoked.",
)
def tokens_create(role: str, name: str, clinic: str, expires: str | None) -> None:
    """Create a token and print ONLY the token on stdout (it is not shown again)."""
    from service.store import StoreError

    clinic = _check_clinic(clinic)
    expires_at = _expiry(expires)
    store = _store()
    try:
        token = store.create_token(name, role, clinic, expires_at=expires_at)
        store.record_audit(
            "cli:tokens", clinic, "token.create", detail=f"token {name.strip()[:100]} ({role})",
            endpoint="forecast tokens create",
        )
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.dispose()
    click.echo(token)


def _expiry(value: str | None) -> dt.datetime | None:
    """``--expires``: a duration (``90d``, ``12h``) or a UTC date/time, in the future."""
    if value is None:
        return None
    now = dt.datetime.now(dt.UTC)
    text = value.strip()
    try:
        if text[-1:] in ("d", "h") and text[:-1].isdigit():
            amount = int(text[:-1])
            step = dt.timedelta(days=1) if text[-1] == "d" else dt.timedelta(hours=1)
            when = now + amount * step
        else:
            when = dt.datetime.fromisoformat(text)
            when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        raise click.BadParameter(
            f"{value!r}: allowed: a duration like 90d or 12h, or a date/time like 2027-01-31",
            param_hint="--expires",
        ) from None
    if when <= now:
        raise click.BadParameter(f"{value!r} is not in the future", param_hint="--expires")
    return when


@tokens.command("list")
def tokens_list() -> None:
    """List every clinic's tokens (name, role, clinic, created, revoked); no secrets."""
    store = _store()
    try:
        rows = store.list_tokens(all_clinics=True)
    finally:
        store.dispose()
    click.echo("name\trole\tclinic\tcreated_at\trevoked_at")
    for r in rows:
        revoked = r["revoked_at"].isoformat() if r["revoked_at"] else ""
        click.echo(
            f"{r['name']}\t{r['role']}\t{r['clinic']}\t{r['created_at'].isoformat()}\t{revoked}"
        )


@tokens.command("revoke")
@click.argument("name")
def tokens_revoke(name: str) -> None:
    """Revoke the token called NAME, of any clinic (it stops working at once)."""
    store = _store()
    try:
        clinic = next(
            (r["clinic"] for r in store.list_tokens(all_clinics=True) if r["name"] == name), None
        )
        ok = store.revoke_token(name, all_clinics=True)
        if ok:
            store.record_audit(
                "cli:tokens", clinic, "token.revoke", detail=f"token {name[:100]}",
                endpoint="forecast tokens revoke",
            )
    finally:
        store.dispose()
    if not ok:
        raise click.ClickException(f"no live token named {name!r}")
    click.echo(f"revoked {name}", err=True)


@click.group("audit")
def audit() -> None:
    """Read the audit trail (every access to patient data, token and model change)."""


@audit.command("export")
@click.option(
    "--since",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    help="First day (or time, UTC) exported, inclusive.",
)
@click.option(
    "--until",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Export rows before this day (or time, UTC).",
)
@click.option("--clinic", default=None, metavar="CLINIC", help="Only this clinic (default: all).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file (default: stdout).",
)
def audit_export(since: Any, until: Any, clinic: str | None, out: Path | None) -> None:
    """Export audit rows as JSON lines, oldest first (one object per row).

    Rows name the actor, clinic, time, action, patient id and outcome, never
    clinical values. The export is read-only: audit rows are never changed.
    """
    import datetime as dt
    import json

    def utc(value: Any) -> Any:
        return None if value is None else value.replace(tzinfo=dt.UTC)

    if clinic is not None:
        clinic = _check_clinic(clinic)
    store = _store()
    n = 0
    try:
        sink = out.open("w", encoding="utf-8") if out is not None else None
        try:
            for row in store.audit_export(since=utc(since), until=utc(until), clinic=clinic):
                line = json.dumps(
                    {
                        k: v.isoformat() if isinstance(v, dt.date | dt.datetime) else v
                        for k, v in row.items()
                    },
                    ensure_ascii=False,
                )
                if sink is not None:
                    sink.write(line + "\n")
                else:
                    click.echo(line)
                n += 1
        finally:
            if sink is not None:
                sink.close()
    finally:
        store.dispose()
    click.echo(f"{n} audit row(s) exported", err=True)


def cohort_records(cohort: Cohort) -> tuple[list[dict[str, Any]], list[tuple[str, str, list]]]:
    """Turn a canonical cohort into the JSON records the service ingests.

    Each session/assessment gets the client id ``file:<table>:<patient>:<date>``:
    the contract allows one row per patient, table and date, so loading the
    same folder again changes nothing, and a changed row is refused (409)
    rather than duplicated.
    """
    from forecast.contract import TABLES

    def records(table: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
        out = frame.copy()
        if "date" in out.columns:
            out["date"] = out["date"].dt.strftime("%Y-%m-%d")
        for col in TABLES[table]:
            if col.kind == "int":
                out[col.name] = out[col.name].astype("Int64").astype(object)
            elif col.kind == "bool":
                out[col.name] = out[col.name].astype("boolean").astype(object)
        out = out.astype(object).where(out.notna(), None)
        rows = out.to_dict("records")
        # JSON clients omit blank fields; None would be accepted too, but this
        # keeps the stored content identical to what an API client would send.
        return [{k: v for k, v in r.items() if v is not None} for r in rows]

    patients = records("patients", cohort.patients)
    items: list[tuple[str, str, list]] = []
    for table in ("sessions", "assessments"):
        frame = getattr(cohort, table)
        rows = records(table, frame)
        by_patient: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            pid = row.pop("patient_id")
            row["id"] = f"file:{table}:{pid}:{row['date']}"
            by_patient.setdefault(pid, []).append(row)
        items.extend((pid, table, recs) for pid, recs in by_patient.items())
    return patients, items


@click.command("load")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--covariate",
    "covariates",
    multiple=True,
    help="Declared extra numeric patient column (repeatable); must match the model.",
)
@clinic_option("Clinic the patients belong to (ids are unique per clinic).")
def load(folder: Path, covariates: tuple[str, ...], clinic: str) -> None:
    """Load a contract FOLDER into the service's store, all or nothing.

    Uses the same validation and idempotent ingestion as the JSON API (client
    ids derived from patient, table and date), so running it twice stores
    nothing new. The store is FORECAST_DATABASE_URL, else the SQLite file in
    the instance folder. Declared covariates are stored with the patients;
    the service serves them when FORECAST_COVARIATES declares them too.
    The patients belong to CLINIC (the same id in two clinics is two patients);
    the load is audited (actor ``cli:load``, one row per patient).
    """
    from forecast.data import ContractError, load_cohort
    from service.errors import ApiProblem
    from service.ingest import ingest_many

    try:
        cohort = load_cohort(folder, covariates=covariates)
    except ContractError as exc:
        for problem in exc.problems:
            click.echo(str(problem))
        raise click.ClickException(f"{len(exc.problems)} problem(s); nothing loaded") from None
    clinic = _check_clinic(clinic)
    patients, items = cohort_records(cohort)
    store = _store(tuple(covariates))
    try:
        audit = {"actor": "cli:load", "action": "patient.write", "endpoint": "forecast load"}
        result = ingest_many(store.scoped(clinic), items, patients=patients, audit=audit)
    except ApiProblem as exc:
        for err in (exc.errors or [])[:50]:
            click.echo(f"{err.get('field', '')}: {err.get('message', '')}")
        raise click.ClickException(f"{exc.title}: {exc.detail}; nothing loaded") from None
    finally:
        store.dispose()
    click.echo(
        f"{len(patients)} patients; {result['created']} rows created, "
        f"{result['unchanged']} unchanged",
        err=True,
    )


COMMANDS: list[click.Command] = [serve, tokens, load, audit]
