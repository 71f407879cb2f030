"""Service configuration: environment variables, defaults and the instance folder.

Environment variables (all optional):

``FORECAST_DATABASE_URL``
    SQLAlchemy URL of the store; default ``sqlite:///<instance>/forecast.sqlite``.
``FORECAST_MODELS``
    Model registry folder; default ``./models`` (as the command line).
``FORECAST_THRESHOLD``
    Default risk threshold of the suggestion (0.20).
``FORECAST_MIN_INTERVAL_DAYS`` / ``FORECAST_MAX_INTERVAL_DAYS``
    Bounds of the suggested interval; default: the policy's own defaults.
``FORECAST_MAX_BODY_BYTES``
    Largest accepted request body (default 10 MiB); larger bodies get 413.
``FORECAST_MAX_JSON_ITEMS``
    Most members of any one JSON array or object in a body (default 20,000);
    more get 413 before the body is parsed (``service.jsonbody.check_shape``).
    Routes bound their own lists lower, before any item is looked at: 5,000
    batch entries, 10,000 rows per call, 10,000 Bundle entries.
``FORECAST_PLAIN_HTTP``
    ``1`` for plain-HTTP development only (``make serve`` on loopback): the
    session cookie is then sent without ``Secure``. Unset in production,
    where a TLS proxy sits in front (docs/security.md).
``FORECAST_PROXY_FIX``
    Number of reverse proxies in front (e.g. ``1`` behind nginx or Caddy):
    the client address, scheme and host are then taken from their
    ``X-Forwarded-*`` headers (werkzeug's ``ProxyFix``). Default 0: trusted from nobody.
``FORECAST_AUTH_FAILURES_PER_MINUTE``
    Failed authentications accepted from one client address per minute and
    worker before it gets 429 (default 20).
``FORECAST_CDS_ALLOW_HS256``
    ``1`` lets CDS clients use HS256 shared secrets: tests only (the CDS
    Hooks specification says symmetric algorithms SHALL NOT be used).
``FORECAST_SECRET_KEY``
    Key signing the page session cookie; if unset one is generated once and
    kept in ``<instance>/secret_key`` (mode 0600) so every worker shares it.
``FORECAST_INSTANCE_PATH``
    The instance folder (default: Flask's, ``./instance`` in a checkout).
``FORECAST_COVARIATES``
    Declared patient covariates, comma-separated (``bmi,ace_score``): extra
    numeric patient fields the service stores (``PUT /patients/{id}``) and
    accepts in stateless histories, so that a model trained with
    ``forecast train --covariate`` can be served. Names follow the data
    contract's rule for declared covariates (not a contract column).
``FORECAST_QUESTIONNAIRES``
    A folder of FHIR R4 Questionnaire ``*.json`` files (the clinic's own
    PHQ-9 / C-SSRS forms): responses that name one are read through its
    items' LOINC codes and answer scores (``forecast.fhir.QuestionnaireMap``).
    Read once at start; an unreadable file stops the start naming it.

Values given to ``create_app(config)`` override the environment. The keys in
``app.config`` are the ``KAP_*`` names below plus Flask's ``SECRET_KEY`` and
``MAX_CONTENT_LENGTH``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forecast.contract import TABLES

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_JSON_ITEMS = 20_000
DEFAULT_THRESHOLD = 0.20


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _env_float(environ: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc


def _env_int(environ: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from exc


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name}={raw!r}: allowed: 1 or 0")


def private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with mode 0600 if missing; make an existing one 0600.

    Used for the SQLite store (its -wal and -shm files take the file's mode)
    and secrets, so that no other local user can read them whatever the umask.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        if target.stat().st_mode & 0o077:
            target.chmod(0o600)


def instance_secret(instance_path: str | os.PathLike[str]) -> str:
    """Return the secret key kept in the instance folder, creating it once.

    Several workers may start at the same moment: the key is written to a
    private temporary file and hard-linked into place, so exactly one key wins
    and nobody reads a half-written file.
    """
    folder = Path(instance_path)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / "secret_key"
    if not target.exists():
        tmp = folder / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            pass  # another worker was first; use its key
        finally:
            tmp.unlink()
    key = target.read_text().strip()
    if not key:
        raise ConfigError(f"{target} is empty; delete it to generate a new key")
    return key


def _config_from_env(env: Mapping[str, str], folder: Path) -> dict[str, Any]:
    """Configuration read from the environment, with the defaults (before overrides)."""
    cfg: dict[str, Any] = {
        "KAP_DATABASE_URL": env.get("FORECAST_DATABASE_URL")
        or f"sqlite:///{(folder / 'forecast.sqlite').as_posix()}",
        "KAP_MODELS_DIR": env.get("FORECAST_MODELS") or None,
        "KAP_THRESHOLD": _env_float(env, "FORECAST_THRESHOLD", DEFAULT_THRESHOLD),
        "KAP_MIN_INTERVAL_DAYS": _env_int(env, "FORECAST_MIN_INTERVAL_DAYS", None),
        "KAP_MAX_INTERVAL_DAYS": _env_int(env, "FORECAST_MAX_INTERVAL_DAYS", None),
        "KAP_QUESTIONNAIRES_DIR": env.get("FORECAST_QUESTIONNAIRES") or None,
        "KAP_COVARIATES": tuple(
            n.strip() for n in env.get("FORECAST_COVARIATES", "").split(",") if n.strip()
        ),
        "MAX_CONTENT_LENGTH": _env_int(env, "FORECAST_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        # Most members of one JSON array or object, and deepest nesting, of a body.
        "KAP_MAX_JSON_ITEMS": _env_int(env, "FORECAST_MAX_JSON_ITEMS", DEFAULT_MAX_JSON_ITEMS),
        "KAP_MAX_JSON_DEPTH": 64,
        # Most rows in one POST /patients/{id}/assessments or /sessions.
        "KAP_MAX_ROWS": 10_000,
        # Most entries of one FHIR Bundle posted to /fhir/r4.
        "KAP_MAX_BUNDLE_ENTRIES": 10_000,
        # Browser session: HttpOnly, SameSite=Strict, Secure unless plain-HTTP development.
        "KAP_PLAIN_HTTP": _env_flag(env, "FORECAST_PLAIN_HTTP"),
        "KAP_PROXY_FIX": _env_int(env, "FORECAST_PROXY_FIX", 0),
        "KAP_AUTH_FAILURES_PER_MINUTE": _env_int(env, "FORECAST_AUTH_FAILURES_PER_MINUTE", 20),
        # HS256 CDS clients (shared secrets): tests only.
        "KAP_CDS_ALLOW_HS256": _env_flag(env, "FORECAST_CDS_ALLOW_HS256"),
        # Load the live model when the app starts (tests of other parts may skip it).
        "KAP_LOAD_MODEL": True,
        # Apply Alembic migrations when the app starts.
        "KAP_MIGRATE": True,
        # Largest number of patients in one POST /api/v1/forecast/batch.
        "KAP_MAX_BATCH": 5000,
        # How often (seconds, at most) a worker checks the live model version shared
        # through the store, so a reload reaches every gunicorn worker.
        "KAP_MODEL_SYNC_SECONDS": 2.0,
    }
    return cfg


def _check_ranges(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError when a numeric setting is out of its allowed range."""
    threshold = cfg["KAP_THRESHOLD"]
    if threshold is None or not 0.0 < float(threshold) < 1.0:
        raise ConfigError(f"FORECAST_THRESHOLD={threshold!r}: allowed: a number between 0 and 1")
    max_body = cfg["MAX_CONTENT_LENGTH"]
    if max_body is None or int(max_body) < 1024:
        raise ConfigError(f"FORECAST_MAX_BODY_BYTES={max_body!r}: allowed: at least 1024")
    lo, hi = cfg["KAP_MIN_INTERVAL_DAYS"], cfg["KAP_MAX_INTERVAL_DAYS"]
    for name, value in (("FORECAST_MIN_INTERVAL_DAYS", lo), ("FORECAST_MAX_INTERVAL_DAYS", hi)):
        if value is not None and int(value) < 1:
            raise ConfigError(f"{name}={value!r}: allowed: a whole number of days >= 1")
    if lo is not None and hi is not None and int(lo) > int(hi):
        raise ConfigError("FORECAST_MIN_INTERVAL_DAYS is larger than FORECAST_MAX_INTERVAL_DAYS")
    items = cfg["KAP_MAX_JSON_ITEMS"]
    if items is None or int(items) < 100:
        raise ConfigError(f"FORECAST_MAX_JSON_ITEMS={items!r}: allowed: at least 100")
    if int(cfg["KAP_PROXY_FIX"] or 0) < 0:
        raise ConfigError("FORECAST_PROXY_FIX: allowed: the number of proxies in front (>= 0)")
    if int(cfg["KAP_AUTH_FAILURES_PER_MINUTE"] or 0) < 1:
        raise ConfigError("FORECAST_AUTH_FAILURES_PER_MINUTE: allowed: a whole number >= 1")


def load_config(
    instance_path: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Build the service configuration.

    Parameters
    ----------
    instance_path : path
        The app's instance folder (default database and secret key live there).
    overrides : mapping, optional
        Values that win over the environment (``create_app(config)``).
    environ : mapping, optional
        Environment to read (``os.environ`` by default; tests pass their own).

    Returns
    -------
    dict
        Configuration keys for ``app.config``.

    Raises
    ------
    ConfigError
        When a variable cannot be parsed or is out of range.
    """
    env = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    folder = Path(instance_path)
    cfg = _config_from_env(env, folder)
    secret = overrides.pop("SECRET_KEY", None) or env.get("FORECAST_SECRET_KEY")
    cfg.update(overrides)
    cfg["SECRET_KEY"] = secret or instance_secret(folder)
    _check_ranges(cfg)
    cfg["SESSION_COOKIE_HTTPONLY"] = True
    cfg["SESSION_COOKIE_SAMESITE"] = "Strict"
    cfg["SESSION_COOKIE_SECURE"] = not cfg["KAP_PLAIN_HTTP"]
    cfg["KAP_COVARIATES"] = tuple(dict.fromkeys(cfg.get("KAP_COVARIATES") or ()))
    contract = {c.name for t in TABLES.values() for c in t}
    for name in cfg["KAP_COVARIATES"]:
        if name in contract or name in ("covariates", "id") or not name.isidentifier():
            raise ConfigError(
                f"FORECAST_COVARIATES: {name!r} cannot be a declared covariate (a contract "
                "column, or not a plain name)"
            )
    return cfg
