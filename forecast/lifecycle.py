"""The life of registry versions: evaluations, approval gates, promotion, retirement.

Every change is one JSON line appended to ``LIFECYCLE.jsonl`` at the top of the
registry (never rewritten; fsynced), with the actor and the UTC time. A
version's status is derived from those lines:

``candidate``  trained, not (or no longer) approved;
``approved``   passed the gates on a recorded evaluation (``forecast models approve``);
``live``       the promoted version: what the service serves (``forecast models promote``);
``retired``    withdrawn (``forecast models retire``); promote it again only after a
               new approval.

Promoting a version makes the previously live one ``approved`` again, so going
back is ``forecast models promote PREVIOUS``. When no version was ever
promoted, the service serves the newest version that loads (development; see
docs/registry.md, "Lifecycle"). When a store is configured
(``FORECAST_DATABASE_URL``), ``forecast models`` also writes every status
change to the audit trail (``forecast.commands.models.audit_event``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forecast import registry

LOG = "LIFECYCLE.jsonl"
STATUSES = ("candidate", "approved", "live", "retired")
ACTOR_ENV = "FORECAST_ACTOR"
#: the horizons whose figures ``forecast models list`` shows
HEADLINE_HORIZON = "28"


class LifecycleError(RuntimeError):
    """A status change is refused (the message says why and what to do)."""


@dataclass(frozen=True)
class Gates:
    """Limits an evaluation must meet for ``approve`` (None: not checked)."""

    max_abs_citl: float | None = 0.05
    max_ici: float | None = 0.05
    min_auc: float | None = None
    horizons: tuple[int, ...] = (28, 56)


def default_actor() -> str:
    """``FORECAST_ACTOR``, else the login name."""
    if os.environ.get(ACTOR_ENV):
        return os.environ[ACTOR_ENV]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- the log
def events(root: str | Path) -> list[dict[str, Any]]:
    """Every lifecycle event of the registry, oldest first (unreadable lines skipped)."""
    path = Path(root) / LOG
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "action" in doc and "version" in doc:
            out.append(doc)
    return out


def _append(root: Path, event: dict[str, Any]) -> dict[str, Any]:
    line = json.dumps(event, sort_keys=True, default=str) + "\n"
    fd = os.open(root / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return event


def _event(action: str, version: str, actor: str, **detail: Any) -> dict[str, Any]:
    return {"time": _now(), "actor": actor, "action": action, "version": version, **detail}


def statuses(root: str | Path) -> dict[str, str]:
    """Status of every version of the registry (see the module notes)."""
    out = dict.fromkeys(registry.list_versions(root), "candidate")
    for ev in events(root):
        v, action = ev["version"], ev["action"]
        if action == "approved":
            out[v] = "approved"
        elif action == "promoted":
            for other, st in out.items():
                if st == "live":
                    out[other] = "approved"
            out[v] = "live"
        elif action == "retired":
            out[v] = "retired"
    return {v: out[v] for v in registry.list_versions(root)}


def live_version(root: str | Path) -> str | None:
    """The promoted version (None when none is promoted or it left the registry)."""
    live = [v for v, st in statuses(root).items() if st == "live"]
    return live[0] if live else None


def ever_promoted(root: str | Path) -> bool:
    """Whether any version of this registry was ever promoted."""
    return any(ev["action"] == "promoted" for ev in events(root))


# --------------------------------------------------------------------------- evaluations
def evaluation_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures an approval rests on, from ``forecast evaluate``'s metrics.

    The version's own predictions on a holdout cohort when there is one
    (``--holdout``), else the cross-validated figures of its specification;
    both at the first forecast point.
    """
    source = "holdout" if metrics.get("holdout") else "cross-validation"
    block = metrics.get("holdout") if source == "holdout" else metrics.get("cv")
    fp = (block or {}).get("forecast_point") or {}
    overall = ((fp.get("models") or {}).get("model") or {}).get("overall") or {}
    by_h = {}
    for h, entry in (overall.get("by_horizon") or {}).items():
        by_h[str(h)] = {k: entry.get(k) for k in ("auc", "brier", "ici", "citl", "slope")}
    return {
        "source": source,
        "n_patients": fp.get("n_patients"),
        "n_episodes": fp.get("n_episodes"),
        "data_fingerprint": metrics.get("data_fingerprint"),
        "by_horizon": by_h,
    }


def record_evaluation(root: str | Path, version: str, metrics: Mapping[str, Any],
                      report_dir: str | Path | None, actor: str | None = None
                      ) -> dict[str, Any]:
    """Append an ``evaluated`` event carrying :func:`evaluation_summary` (no patient rows)."""
    root = Path(root)
    summary = evaluation_summary(metrics)
    digest = hashlib.sha256(registry.dumps(dict(metrics)).encode()).hexdigest()
    return _append(root, _event(
        "evaluated", version, actor or default_actor(), evaluation_id=uuid.uuid4().hex[:12],
        metrics_sha256=digest, report=None if report_dir is None else str(report_dir),
        summary=summary))


def latest_evaluation(root: str | Path, version: str) -> dict[str, Any] | None:
    """The most recent ``evaluated`` event of ``version``, or None."""
    found = [ev for ev in events(root) if ev["action"] == "evaluated" and ev["version"] == version]
    return found[-1] if found else None


def gate_failures(summary: Mapping[str, Any], gates: Gates) -> list[str]:
    """Why ``summary`` misses ``gates`` (empty when it passes)."""
    out = []
    by_h = summary.get("by_horizon") or {}
    for h in gates.horizons:
        entry = by_h.get(str(h))
        if entry is None:
            out.append(f"no figures at {h} days")
            continue
        citl, ici, auc = entry.get("citl"), entry.get("ici"), entry.get("auc")
        if gates.max_abs_citl is not None:
            if citl is None:
                out.append(f"CITL at {h} days was not computed")
            elif abs(citl) > gates.max_abs_citl:
                out.append(f"|CITL| at {h} days is {abs(citl):.3f} > {gates.max_abs_citl}")
        if gates.max_ici is not None:
            if ici is None:
                out.append(f"ICI at {h} days was not computed")
            elif ici > gates.max_ici:
                out.append(f"ICI at {h} days is {ici:.3f} > {gates.max_ici}")
        if gates.min_auc is not None:
            if auc is None:
                out.append(f"AUC at {h} days was not computed")
            elif auc < gates.min_auc:
                out.append(f"AUC at {h} days is {auc:.3f} < {gates.min_auc}")
    return out


# --------------------------------------------------------------------------- changes
def _known(root: Path, version: str) -> str:
    st = statuses(root)
    if version == "latest" and st:
        return list(st)[-1]
    if version not in st:
        raise registry.RegistryError(f"unknown model version {version} in {root}; "
                                     + registry.available_text(root))
    return version


def approve(root: str | Path, version: str, *, actor: str | None = None,
            gates: Gates = Gates()) -> dict[str, Any]:
    """Record an approval resting on the version's latest recorded evaluation.

    Raises :class:`LifecycleError` without a recorded evaluation, when the
    evaluation misses ``gates``, or for a live version.
    """
    root = Path(root)
    version = _known(root, version)
    if statuses(root)[version] == "live":
        raise LifecycleError(f"{version} is live already (approved when it was promoted)")
    ev = latest_evaluation(root, version)
    if ev is None:
        raise LifecycleError(
            f"{version} has no recorded evaluation; run `forecast evaluate DATA --model "
            f"{version} --holdout HOLDOUT --out REPORT --models {root}` first")
    failures = gate_failures(ev.get("summary") or {}, gates)
    if failures:
        raise LifecycleError(
            f"{version} misses the approval gates on evaluation {ev['evaluation_id']} "
            f"({ev['summary'].get('source')}): " + "; ".join(failures)
            + " (change the limits with --max-citl/--max-ici only with a documented reason)")
    event = _event("approved", version, actor or default_actor(),
                   evaluation_id=ev["evaluation_id"], gates=asdict(gates))
    return _append(root, event)


def promote(root: str | Path, version: str, *, actor: str | None = None) -> dict[str, Any]:
    """Make ``version`` the one the service serves (it must be approved, and load)."""
    root = Path(root)
    version = _known(root, version)
    st = statuses(root)
    if st[version] == "live":
        raise LifecycleError(f"{version} is live already")
    if st[version] != "approved":
        raise LifecycleError(f"{version} is {st[version]}, not approved; run `forecast models "
                             f"approve {version}` first")
    loaded = registry.load(version, root)  # verified before anything is recorded
    previous = live_version(root)
    return _append(root, _event("promoted", version, actor or default_actor(),
                                previous=previous, signature=loaded.signature))


def retire(root: str | Path, version: str, *, actor: str | None = None,
           reason: str | None = None) -> dict[str, Any]:
    """Withdraw ``version`` (a live version must be replaced by promoting another first)."""
    root = Path(root)
    version = _known(root, version)
    st = statuses(root)[version]
    if st == "live":
        raise LifecycleError(f"{version} is live; promote another version first "
                             "(`forecast models promote VERSION`), then retire it")
    if st == "retired":
        raise LifecycleError(f"{version} is retired already")
    return _append(root, _event("retired", version, actor or default_actor(), reason=reason))
