"""``forecast models``: list, show, compare, approve, promote and retire registry versions.

The status of each version (candidate / approved / live / retired) lives in
the registry's lifecycle log (:mod:`forecast.lifecycle`); the service serves
the ``live`` (promoted) version. See docs/researcher-workflow.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from forecast.commands import models_option

COMMANDS: list[click.Command] = []

_DATA_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.group("models")
def models_group() -> None:
    """See and change which registry version is approved and live (served)."""


def _root(models_opt: Path | None) -> Path:
    from forecast import registry

    return registry.models_dir(models_opt)


def _version(root: Path, ref: str) -> str:
    """A version id of the registry (``latest`` allowed); unknown ids list the available ones."""
    from forecast import registry

    return registry.resolve(ref, root).name


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _row(root: Path, version: str, status: str) -> dict[str, Any]:
    from forecast import lifecycle, registry

    path = root / version
    card = registry._read_json(path / registry.CARD_JSON)  # noqa: SLF001 - same package family
    fp = (registry._read_json(path / registry.FINGERPRINT)  # noqa: SLF001
          if (path / registry.FINGERPRINT).is_file() else {})
    ev = lifecycle.latest_evaluation(root, version)
    summary = (ev or {}).get("summary") or {}
    h = (summary.get("by_horizon") or {}).get(lifecycle.HEADLINE_HORIZON) or {}
    counts = fp.get("counts") or {}
    return {
        "version": version,
        "status": status,
        "kind": (card.get("model") or {}).get("kind"),
        "trained_utc": card.get("created_utc"),
        "data_sha256": (fp.get("sha256") or "")[:12] or None,
        "patients": counts.get("patients"),
        "sessions": counts.get("sessions"),
        "assessments": counts.get("assessments"),
        "signed": (path / "MANIFEST.sig").is_file(),
        "evaluation": None if ev is None else {
            "id": ev.get("evaluation_id"), "source": summary.get("source"),
            "auc28": h.get("auc"), "brier28": h.get("brier"), "ici28": h.get("ici"),
            "citl28": h.get("citl")},
    }


@models_group.command("list")
@models_option("models_opt")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def list_command(models_opt: Path | None, as_json: bool) -> None:
    """Every version: kind, when trained, on what data, headline figures, status."""
    from forecast import lifecycle

    root = _root(models_opt)
    statuses = lifecycle.statuses(root)
    rows = [_row(root, v, st) for v, st in statuses.items()]
    live = lifecycle.live_version(root)
    if as_json:
        click.echo(json.dumps({"models_dir": str(root), "live": live, "versions": rows},
                              indent=2))
        return
    if not rows:
        click.echo(f"no version in {root}; train one with `forecast train DIR --models {root}`")
        return
    click.echo("version                        status     kind       trained (UTC)         "
               "patients  data sha256   signed  AUC28  Brier28  ICI28  CITL28  evaluated on")
    for r in rows:
        ev = r["evaluation"] or {}
        click.echo(
            f"{r['version']:<30} {r['status']:<10} {str(r['kind']):<10} "
            f"{str(r['trained_utc'])[:19]:<21} {str(r['patients']):>8}  "
            f"{str(r['data_sha256']):<12}  {'yes' if r['signed'] else 'no':<6}  "
            f"{_fmt(ev.get('auc28')):>5}  {_fmt(ev.get('brier28')):>7}  "
            f"{_fmt(ev.get('ici28')):>5}  {_fmt(ev.get('citl28')):>6}  "
            f"{ev.get('source') or 'not evaluated'}")
    if live:
        click.echo(f"live (served after the next reload): {live}")
    elif lifecycle.ever_promoted(root):
        click.echo("live: none (the promoted version left the registry); promote one")
    else:
        click.echo(f"live: none promoted; a service serves the newest version that loads "
                   f"({rows[-1]['version']}) until one is promoted")


@models_group.command("show")
@click.argument("version")
@models_option("models_opt")
def show_command(version: str, models_opt: Path | None) -> None:
    """The model card of VERSION, its status and its lifecycle history."""
    from forecast import lifecycle, registry

    root = _root(models_opt)
    version = _version(root, version)
    model = registry.load(version, root)
    click.echo((root / version / registry.CARD_MD).read_text().rstrip())
    click.echo("")
    click.echo("## Registry status")
    click.echo("")
    click.echo(f"- status: {lifecycle.statuses(root)[version]}")
    click.echo(f"- signature: {model.signature}")
    for ev in lifecycle.events(root):
        if ev["version"] == version:
            extra = ev.get("evaluation_id") or ev.get("reason") or ""
            click.echo(f"- {ev['time']} {ev['action']} by {ev['actor']}"
                       + (f" ({extra})" if extra else ""))


def _record(root: Path, event: dict[str, Any]) -> None:
    try:
        audited = audit_event(event)
    except Exception as exc:  # noqa: BLE001 - the registry record stands; say what failed
        click.echo(f"warning: the status change is recorded in {root} but not in the audit "
                   f"trail ({type(exc).__name__}: {exc})", err=True)
        return
    if audited:
        click.echo("recorded in the audit trail", err=True)


@models_group.command("approve")
@click.argument("version")
@models_option("models_opt")
@click.option("--actor", default=None, help="Who approves (default: $FORECAST_ACTOR, else the "
                                              "login name).")
@click.option("--max-citl", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Gate: largest |calibration-in-the-large| at each gated horizon.")
@click.option("--max-ici", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Gate: largest ICI at each gated horizon.")
@click.option("--min-auc", type=click.FloatRange(0, 1), default=None,
              help="Gate: smallest AUC at each gated horizon (not checked by default).")
@click.option("--horizon", "horizons", type=int, multiple=True, default=(28, 56),
              show_default=True, help="Horizon (days) the gates apply to (repeatable).")
def approve_command(version: str, models_opt: Path | None, actor: str | None,
                    max_citl: float, max_ici: float, min_auc: float | None,
                    horizons: tuple[int, ...]) -> None:
    """Approve VERSION on its latest recorded evaluation (refused if a gate is missed)."""
    from forecast import lifecycle

    root = _root(models_opt)
    version = _version(root, version)
    _writable(root)
    gates = lifecycle.Gates(max_abs_citl=max_citl, max_ici=max_ici, min_auc=min_auc,
                            horizons=tuple(horizons))
    event = lifecycle.approve(root, version, actor=actor, gates=gates)
    _record(root, event)
    click.echo(f"approved {version} by {event['actor']} on evaluation "
               f"{event['evaluation_id']} (next: `forecast models promote {version}`)")


@models_group.command("promote")
@click.argument("version")
@models_option("models_opt")
@click.option("--actor", default=None, help="Who promotes (default: $FORECAST_ACTOR, else the "
                                              "login name).")
def promote_command(version: str, models_opt: Path | None, actor: str | None) -> None:
    """Make the approved VERSION live: the service serves it after its next reload."""
    from forecast import lifecycle

    root = _root(models_opt)
    version = _version(root, version)
    _writable(root)
    event = lifecycle.promote(root, version, actor=actor)
    _record(root, event)
    prev = event.get("previous")
    click.echo(f"{version} is live (promoted by {event['actor']}"
               + (f"; previous {prev}, back with `forecast models promote {prev}`" if prev
                  else "") + "); reload the service: POST /api/v1/model/reload or SIGHUP")


@models_group.command("retire")
@click.argument("version")
@models_option("models_opt")
@click.option("--actor", default=None, help="Who retires (default: $FORECAST_ACTOR, else the "
                                              "login name).")
@click.option("--reason", default=None, help="Why (kept in the lifecycle log; no patient data).")
def retire_command(version: str, models_opt: Path | None, actor: str | None,
                   reason: str | None) -> None:
    """Retire VERSION (a live version must be replaced by promoting another first)."""
    from forecast import lifecycle

    root = _root(models_opt)
    version = _version(root, version)
    _writable(root)
    event = lifecycle.retire(root, version, actor=actor, reason=reason)
    _record(root, event)
    click.echo(f"retired {version} (by {event['actor']})")


def _writable(root: Path) -> None:
    from forecast import registry

    registry.check_writable(root)


@models_group.command("keygen")
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
def keygen_command(key_file: Path) -> None:
    """Write a new Ed25519 signing key to KEY_FILE (0600) and its public key to KEY_FILE.pub.

    Keep KEY_FILE outside the registry; point FORECAST_SIGNING_KEY_FILE at it
    where you train, and FORECAST_VERIFY_KEY_FILE at KEY_FILE.pub where the
    service runs.
    """
    from forecast import signing

    key, pub = signing.generate(key_file)
    click.echo(f"wrote {key} (private, mode 0600) and {pub} (public)")


@models_group.command("compare")
@click.argument("version_a")
@click.argument("version_b")
@click.option("--on", "data_dir", type=_DATA_DIR, required=True,
              help="Holdout cohort folder: both versions forecast the same episodes.")
@models_option("models_opt")
@click.option("--reps", type=click.IntRange(min=0), default=200, show_default=True,
              help="Paired patient-level bootstrap resamples for the 95% intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Date of the suggested-date comparison (default: the last date in the data).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def compare_command(version_a: str, version_b: str, data_dir: Path, models_opt: Path | None,
                    reps: int, seed: int, as_of: Any, as_json: bool) -> None:
    """Compare VERSION_A and VERSION_B on the same holdout (B minus A, paired bootstrap)."""
    from forecast import registry
    from forecast.commands.modelling import _load
    from forecast.commands.progress import Progress
    from forecast.evaluation.compare import compare_versions

    root = _root(models_opt)
    a = registry.load(_version(root, version_a), root)
    b = registry.load(_version(root, version_b), root)
    covariates = tuple(dict.fromkeys((*a.covariates, *b.covariates)))
    cohort = _load(data_dir, covariates)
    with Progress(reps + 2, "compare") as bar:
        result = compare_versions(cohort, a, b, reps=reps, seed=seed, as_of=as_of,
                                  progress=bar)
    if as_json:
        click.echo(registry.dumps(result).rstrip())
        return
    click.echo(f"{b.version} minus {a.version} on {data_dir} "
               f"({result['n_episodes']} episodes of {result['n_patients']} patients at the "
               f"first forecast point; 95% paired bootstrap, {reps} resamples)")
    click.echo("horizon  AUC diff [95% CI]          Brier diff [95% CI]        "
               "ICI diff [95% CI]")
    for h, row in result["by_horizon"].items():
        cells = []
        for key in ("auc", "brier", "ici"):
            d = row[key]
            cells.append(f"{_fmt(d['diff'], 4):>8} [{_fmt(d['lower'], 4)}, "
                         f"{_fmt(d['upper'], 4)}]")
        click.echo(f"{h:>5} d  " + "  ".join(f"{c:<25}" for c in cells))
    moved = result["suggested_dates"]
    click.echo(f"suggested dates as of {moved['as_of']}: {moved['moved_over_7_days']} of "
               f"{moved['patients']} patients move by more than 7 days "
               f"({moved['gained_or_lost']} gain or lose a suggestion)")
    click.echo("(AUC: higher is better; Brier and ICI: lower is better)")


def audit_event(event: Mapping[str, Any]) -> bool:
    """Write a status change to the store's audit trail when a store is configured.

    Returns whether a row was written. The row carries no patient (``-``);
    ``status`` is ``model_<action>`` and ``endpoint`` is ``forecast models``.
    """
    if not os.environ.get("FORECAST_DATABASE_URL"):
        return False
    from service.app import open_store  # local: only when a store is configured

    store = open_store()
    try:
        digest = hashlib.sha256(json.dumps(dict(event), sort_keys=True,
                                           default=str).encode()).hexdigest()
        store.add_audit([{
            "token_name": str(event["actor"])[:64],
            "patient_id": "-",
            "as_of": datetime.now(UTC).date(),
            "model_version": event["version"],
            "inputs_hash": digest,
            "status": f"model_{event['action']}",
            "suggested_date": None,
            "request_id": uuid.uuid4().hex,
            "endpoint": "forecast models",
        }])
    finally:
        store.dispose()
    return True


COMMANDS.append(models_group)
