"""The live model: loaded once per app, swapped atomically on reload.

``app.extensions["kap_model"]`` holds one :class:`ModelState`. A request
takes :meth:`ModelState.get` once and uses that ``LoadedModel`` object to the
end, so a reload in the middle of a request never mixes two versions.

Reload (``POST /api/v1/model/reload``, or SIGHUP under ``forecast serve``)
loads the registry's promoted version (``forecast models promote``; the
newest version only in a registry where nothing was ever promoted)
completely and only then replaces the one reference; if loading fails, the
previous version keeps serving and the caller gets a 409 problem. Loading
verifies every checksum, the version's signature (``forecast.signing``;
unsigned versions only with ``FORECAST_ALLOW_UNSIGNED=1``) and the
plausibility of its risks on a built-in synthetic reference set
(``forecast.plausibility``).

Several workers (gunicorn) share the choice through the store: a successful
reload records the version as ``live_model_version``; every worker checks
that record at most every ``KAP_MODEL_SYNC_SECONDS`` (2 s) when it serves a
request and switches to the same version (verified again by the registry).
A worker that starts picks the recorded version, else the newest version
that verifies; a damaged latest version is never served.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

from forecast import lifecycle, plausibility, registry
from service.errors import ApiProblem

if TYPE_CHECKING:
    from service.store import Store

log = logging.getLogger("service.model")

LIVE_KEY = "live_model_version"
NO_MODEL_DETAIL = (
    "No trained model is available. Train one with `forecast train DIR --models MODELS` "
    "(the service reads FORECAST_MODELS), then reload with POST /api/v1/model/reload."
)


class ModelState:
    """Holder of the live ``forecast.registry.LoadedModel``.

    Parameters
    ----------
    models_dir : path or None
        Registry folder; None resolves like the command line
        (``FORECAST_MODELS``, else ``./models``).
    store : Store, optional
        Where the live version is shared between workers.
    sync_seconds : float
        How often (at most) a request checks the shared live version.
    """

    def __init__(
        self,
        models_dir: str | os.PathLike[str] | None,
        store: Store | None = None,
        sync_seconds: float = 2.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        self._option = models_dir
        self._settings = dict(settings or {})
        self._store = store
        self._sync_seconds = float(sync_seconds)
        self._next_sync = 0.0
        self._current: Any = None
        self._lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def models_dir(self) -> Path:
        """The registry folder this state loads from."""
        return Path(registry.models_dir(self._option))

    @property
    def current(self) -> Any:
        """The live ``LoadedModel`` or None (a plain reference read: atomic)."""
        return self._current

    @property
    def version(self) -> str | None:
        """Version id of the live model, or None."""
        current = self._current
        return None if current is None else str(current.version)

    def sync(self) -> str | None:
        """Follow a reload made by another worker (throttled); return the live version."""
        self._follow_shared()
        return self.version

    def get(self) -> Any:
        """The live model for one request (after following a reload by another worker).

        Raises
        ------
        ApiProblem
            503 with "train a model" guidance when no model is loaded.
        """
        self._follow_shared()
        current = self._current
        if current is None:
            raise ApiProblem(503, "No model loaded", NO_MODEL_DETAIL, headers={"Retry-After": "60"})
        return current

    # ------------------------------------------------------------------ loading
    def _load(self, ref: str) -> Any:
        """Load ``ref`` from the registry, refusing a version the service cannot feed.

        A model trained with declared covariates (``forecast train --covariate``)
        needs those patient fields: the service stores and accepts the ones
        ``FORECAST_COVARIATES`` declares. A version needing a covariate not
        declared there would fail each forecast, so it is refused like a
        damaged one, naming the covariates.
        """
        env = {**os.environ, **self._settings}
        loaded = registry.load(ref, self.models_dir, require_signature=True, env=env)
        declared = () if self._store is None else self._store.covariates
        missing = [c for c in loaded.covariates if c not in declared]
        if missing:
            raise registry.RegistryError(
                f"version {loaded.version} was trained with declared covariates "
                f"({', '.join(missing)}) that the service does not store; declare them "
                f"with FORECAST_COVARIATES={','.join(loaded.covariates)} (and store them "
                "with PUT /api/v1/patients/{id}), or use forecast predict for this one"
            )
        try:
            plausibility.check(loaded)
        except plausibility.ImplausibleModel as exc:
            raise registry.RegistryError(f"{exc}; refused") from None
        return loaded

    def _target(self, reload: bool = False) -> Any:
        """The promoted version; if nothing was ever promoted, the newest one.

        Without a promotion, a worker that starts takes the newest version that
        verifies; a reload takes the latest version or refuses (409).
        """
        root = self.models_dir
        if lifecycle.ever_promoted(root):
            live = lifecycle.live_version(root)
            if live is None:
                raise registry.RegistryError(
                    f"the promoted version is no longer in {root}; promote another with "
                    "`forecast models promote VERSION`")
            return self._load(live)
        return self._load("latest") if reload else self._newest_valid()

    def _newest_valid(self) -> Any:
        """The newest version that verifies (a damaged latest one is skipped, and logged)."""
        versions = registry.list_versions(self.models_dir)
        if not versions:
            raise registry.RegistryError(f"no trained model in {self.models_dir}")
        errors = []
        for ref in reversed(versions):
            try:
                return self._load(ref)
            except (registry.RegistryError, OSError, ValueError) as exc:
                errors.append(exc)
                log.warning(
                    "model version refused",
                    extra={"event": "model_refused", "version": ref, "error": type(exc).__name__},
                )
        raise registry.RegistryError(f"no version in {self.models_dir} verifies: {errors[0]}")

    def _shared_version(self) -> str | None:
        if self._store is None:
            return None
        try:
            return self._store.get_state(LIVE_KEY)
        except Exception:  # noqa: BLE001 - a store hiccup must not stop serving
            log.warning("live model version unreadable", extra={"event": "model_sync_failed"})
            return None

    def load_initial(self) -> None:
        """Load the shared live version, else the newest valid one; else serve 503."""
        pinned = self._shared_version()
        try:
            if pinned:
                try:
                    self._current = self._load(pinned)
                except Exception:  # noqa: BLE001 - fall back to the newest valid version
                    log.warning(
                        "recorded live model refused",
                        extra={"event": "model_refused", "version": pinned},
                    )
                    self._current = self._target()
            else:
                self._current = self._target()
            self.last_error = None
            log.info("model loaded", extra={"event": "model_loaded", "version": self.version})
        except Exception as exc:  # noqa: BLE001 - the service runs without a model (503)
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "no model loaded", extra={"event": "model_missing", "error": type(exc).__name__}
            )
        self._next_sync = time.monotonic() + self._sync_seconds

    def _follow_shared(self) -> None:
        """Switch to the version another worker made live (checked every few seconds)."""
        if self._store is None or time.monotonic() < self._next_sync:
            return
        if not self._lock.acquire(blocking=False):
            return  # a reload or sync is running; serve the current model meanwhile
        try:
            self._next_sync = time.monotonic() + self._sync_seconds
            wanted = self._shared_version()
            if not wanted or wanted == self.version:
                return
            try:
                self._current = self._load(wanted)
                log.info("model followed", extra={"event": "model_followed", "version": wanted})
            except Exception as exc:  # noqa: BLE001 - keep serving what we have
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "shared live model refused",
                    extra={"event": "model_refused", "version": wanted},
                )
        finally:
            self._lock.release()

    def reload(self) -> Any:
        """Switch to the registry's promoted version, or keep the current one.

        Returns
        -------
        LoadedModel
            The model now live.

        Raises
        ------
        ApiProblem
            409 when the promoted (else latest) version cannot be loaded (missing,
            tampered, unsigned, implausible); the previous version stays live.
        """
        with self._lock:  # one reload at a time; readers never wait on this lock
            previous = self.version
            try:
                loaded = self._target(reload=True)
            except (registry.RegistryError, OSError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "model reload refused",
                    extra={"event": "model_reload_refused", "kept_version": previous},
                )
                kept = f"version {previous} stays live" if previous else "no model is live"
                raise ApiProblem(
                    409,
                    "Model reload refused",
                    f"The registry's promoted version could not be loaded ({exc}); {kept}.",
                ) from exc
            if self._store is not None:
                # Recorded first: if this fails, nothing changed anywhere.
                self._store.set_state(LIVE_KEY, str(loaded.version))
            self._current = loaded
            self.last_error = None
            self._next_sync = time.monotonic() + self._sync_seconds
        log.info(
            "model reloaded",
            extra={"event": "model_reloaded", "version": self.version, "previous": previous},
        )
        return loaded


def init_app(app: Flask) -> None:
    """Attach the model state to ``app`` and load the live version if configured."""
    state = ModelState(
        app.config.get("KAP_MODELS_DIR"),
        app.extensions.get("kap_store"),
        float(app.config.get("KAP_MODEL_SYNC_SECONDS", 2.0)),
        _signature_settings(app.config),
    )
    app.extensions["kap_model"] = state
    if app.config.get("KAP_LOAD_MODEL", True):
        state.load_initial()


def _signature_settings(config: Any) -> dict[str, str]:
    """Key settings given in the app config (they override the environment)."""
    out = {}
    if config.get("KAP_MODEL_VERIFY_KEY_FILE"):
        out["FORECAST_VERIFY_KEY_FILE"] = str(config["KAP_MODEL_VERIFY_KEY_FILE"])
    if config.get("KAP_ALLOW_UNSIGNED_MODELS") is not None:
        out["FORECAST_ALLOW_UNSIGNED"] = "1" if config["KAP_ALLOW_UNSIGNED_MODELS"] else "0"
    return out


def install_sighup(app: Flask) -> None:
    """Reload the model of ``app`` on SIGHUP (single-process server, main thread only).

    The reload runs in a helper thread: a signal handler must not block on the
    reload lock that a request thread may hold.
    """
    state: ModelState = app.extensions["kap_model"]

    def _reload() -> None:
        try:
            state.reload()
        except ApiProblem:
            pass  # already logged; the previous version keeps serving

    def _handler(_signum: int, _frame: Any) -> None:
        threading.Thread(target=_reload, name="kap-model-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, _handler)
