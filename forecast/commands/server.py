"""``forecast serve`` and ``forecast tokens create|list|revoke``.

``serve`` runs the service for one user with werkzeug's threaded server
(production: gunicorn, see docs/service.md). The token commands open the same
store as the service (``FORECAST_DATABASE_URL``, else the SQLite file in the
instance folder) without loading a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import pandas as pd

from forecast.commands import models_option

if TYPE_CHECKING:
    from forecast.cohort import Cohort
    from service.store import Store

ROLE_CHOICE = click.Choice(["clinician", "researcher", "admin"])


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
def tokens_create(role: str, name: str) -> None:
    """Create a token and print ONLY the token on stdout (it is not shown again)."""
    from service.store import StoreError

    store = _store()
    try:
        token = store.create_token(name, role)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.dispose()
    click.echo(token)


@tokens.command("list")
def tokens_list() -> None:
    """List tokens (name, role, created, revoked); secrets are never shown."""
    store = _store()
    try:
        rows = store.list_tokens()
    finally:
        store.dispose()
    click.echo("name\trole\tcreated_at\trevoked_at")
    for r in rows:
        revoked = r["revoked_at"].isoformat() if r["revoked_at"] else ""
        click.echo(f"{r['name']}\t{r['role']}\t{r['created_at'].isoformat()}\t{revoked}")


@tokens.command("revoke")
@click.argument("name")
def tokens_revoke(name: str) -> None:
    """Revoke the token called NAME (it stops working at once)."""
    store = _store()
    try:
        ok = store.revoke_token(name)
    finally:
        store.dispose()
    if not ok:
        raise click.ClickException(f"no live token named {name!r}")
    click.echo(f"revoked {name}", err=True)


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
def load(folder: Path, covariates: tuple[str, ...]) -> None:
    """Load a contract FOLDER into the service's store, all or nothing.

    Uses the same validation and idempotent ingestion as the JSON API (client
    ids derived from patient, table and date), so running it twice stores
    nothing new. The store is FORECAST_DATABASE_URL, else the SQLite file in
    the instance folder. Declared covariates are stored with the patients;
    the service serves them when FORECAST_COVARIATES declares them too.
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
    patients, items = cohort_records(cohort)
    store = _store(tuple(covariates))
    try:
        result = ingest_many(store, items, patients=patients)
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


COMMANDS: list[click.Command] = [serve, tokens, load]
