"""The model registry on disk: versioned, checksummed, atomically written.

Layout::

    models/                              (--models DIR, else $FORECAST_MODELS, else ./models)
      20261127T041512345Z-1a2b3c4d/      one folder per version (UTC time + content hash)
        bundle.json  bundle.npz          numpy-only serving form (forecast.bundle)
        model_card.json  model_card.md   TRIPOD+AI-style card
        metrics.json                     evaluation metrics (or a note that none were run)
        data_fingerprint.json            sha256 of the canonical training data + counts
        environment.json                 python and package versions
        outcome_definition.json          the OutcomeDefinition used
        MANIFEST.json                    format, version id, sha256 and size of every file
        MANIFEST.sig                     Ed25519 signature of MANIFEST.json (forecast.signing)
      LIFECYCLE.jsonl                    status changes and evaluations (forecast.lifecycle)
      .tmp-...                           a write in progress (ignored by readers)

A version is written into a temporary folder inside the registry, every file
fsynced, and then renamed into place with one ``os.rename``: a killed
``forecast train`` leaves at most a ``.tmp-*`` folder that readers ignore (and
the next save removes when it is older than an hour), never a half version.
:func:`load` verifies the manifest and every checksum before reading anything
and refuses tampered, truncated, foreign or unknown-format files with a
:class:`RegistryError` naming the file: checksums are verified and versions
are loaded only from the registry folder (see docs/registry.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast import model_card, signing
from forecast.bundle import JSON_NAME, NPZ_NAME, Bundle, BundleError
from forecast.features import FEATURES
from forecast.outcomes import OutcomeDefinition

ENV_VAR = "FORECAST_MODELS"
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = "kap-forecast-model"
MANIFEST_VERSION = 1
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
METRICS = "metrics.json"
FINGERPRINT = "data_fingerprint.json"
ENVIRONMENT = "environment.json"
DEFINITION = "outcome_definition.json"
VERSION_RE = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{8}$")
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3600
_PACKAGES = ("kap-forecast", "numpy", "scipy", "pandas", "lifelines", "scikit-survival",
             "scikit-learn")


class RegistryError(RuntimeError):
    """A model version cannot be found, or fails verification."""


# --------------------------------------------------------------------------- locations
def models_dir(option: str | Path | None = None) -> Path:
    """Resolve the registry folder: ``--models``, else ``$FORECAST_MODELS``, else ./models."""
    if option is not None and str(option) != "":
        return Path(option)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path("models")


_registry_dir = models_dir  # save_version/load take a ``models_dir`` argument that shadows it


def list_versions(models_dir_: str | Path | None = None) -> list[str]:
    """Complete versions in the registry, oldest first (temp folders and strays ignored)."""
    root = models_dir(models_dir_)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and VERSION_RE.match(p.name) and (p / MANIFEST).is_file()
    )


def resolve(ref: str | Path, models_dir_: str | Path | None = None) -> Path:
    """Folder of a version given as an id, ``"latest"`` or a path inside the registry."""
    root = models_dir(models_dir_)
    ref_s = str(ref)
    if ref_s == "latest":
        versions = list_versions(root)
        if not versions:
            raise RegistryError(
                f"no trained model in {root}; run `forecast train DIR --models {root}` first"
            )
        return root / versions[-1]
    if VERSION_RE.match(ref_s):
        path = root / ref_s
        if not path.is_dir():
            raise RegistryError(f"unknown model version {ref_s} in {root}; "
                                + available_text(root))
        return path
    path = Path(ref_s).expanduser().resolve()
    root_r = root.expanduser().resolve()
    if path.parent != root_r:
        raise RegistryError(
            f"refusing to load a model from {ref_s}: models load only from the registry folder "
            f"{root} (give a version id, 'latest', or a version folder inside it)"
        )
    if not VERSION_RE.match(path.name) or not path.is_dir():
        raise RegistryError(f"{ref_s} is not a model version folder of {root}; "
                            + available_text(root))
    return path


def available_text(root: str | Path) -> str:
    """``available: A, B`` (newest last, at most 8) or how to train a first version."""
    versions = list_versions(root)
    if not versions:
        return f"the registry holds no version yet (run `forecast train DIR --models {root}`)"
    shown = versions[-8:]
    more = f" (and {len(versions) - len(shown)} older)" if len(versions) > len(shown) else ""
    return "available: " + ", ".join(shown) + more + " (see `forecast models list`)"


def check_writable(root: str | Path) -> Path:
    """Create the registry folder if needed and prove it writable, before any long work.

    Raises :class:`RegistryError` naming the folder and what to do.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f"{_TMP_PREFIX}probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RegistryError(
            f"the model registry {root} is not writable ({exc.strerror or exc}); give a "
            "writable folder with --models DIR or FORECAST_MODELS"
        ) from None
    return root


# --------------------------------------------------------------------------- hashing
def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_frames(frames: Mapping[str, pd.DataFrame]) -> str:
    """sha256 of canonical frames (column names, dtypes and row hashes; order-sensitive)."""
    h = hashlib.sha256()
    for name in sorted(frames):
        df = frames[name]
        h.update(name.encode())
        h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
        h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def fingerprint_cohort(cohort: Any, **counts: int) -> dict[str, Any]:
    """Fingerprint of a :class:`forecast.cohort.Cohort` plus row counts (no patient rows)."""
    frames = {"patients": cohort.patients, "sessions": cohort.sessions,
              "assessments": cohort.assessments}
    return {
        "sha256": fingerprint_frames(frames),
        "algorithm": "sha256 over canonical frames (forecast.registry.fingerprint_frames)",
        "counts": {
            "patients": int(len(cohort.patients)),
            "sessions": int(len(cohort.sessions)),
            "assessments": int(len(cohort.assessments)),
            **{k: int(v) for k, v in counts.items()},
        },
    }


def environment() -> dict[str, Any]:
    """Python and package versions (recorded with each version)."""
    pkgs: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            pkgs[name] = version(name)
        except PackageNotFoundError:
            pkgs[name] = None
    return {"python": platform.python_version(), "packages": pkgs}


# --------------------------------------------------------------------------- writing
def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, pd.Timestamp | datetime):
        return obj.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    """Deterministic JSON (sorted keys, NaN/inf refused -> null) used for every registry file."""
    return json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default) + "\n"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders; nothing to sync then
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _clean_stale_tmp(root: Path) -> None:
    now = time.time()
    for p in root.glob(_TMP_PREFIX + "*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            continue


def new_version_id(content_hash: str, now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSmmmZ-<8 hex>``: sortable by time, unique by content."""
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    return f"{stamp}-{content_hash[:8]}"


def save_version(
    bundle: Bundle,
    *,
    models_dir: str | Path | None = None,
    definition: Any = None,
    card: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    signing_key: Any = "env",
    _crash_after: str | None = None,
) -> str:
    """Write a new version atomically and return its id.

    Parameters
    ----------
    bundle : Bundle
        The serving form of the fitted model.
    models_dir : path, optional
        Registry folder (see :func:`models_dir`).
    definition : OutcomeDefinition, optional
        The outcome definition used to build the training data (default one if None).
    card : mapping, optional
        Extra model-card fields (merged over the generated card).
    metrics : mapping, optional
        Evaluation metrics, if any were computed at train time.
    fingerprint : mapping, optional
        :func:`fingerprint_cohort` of the training data.
    training : mapping, optional
        Training summary (counts, settings; never patient rows).
    signing_key : Ed25519PrivateKey, None or "env"
        Key that signs the manifest (``MANIFEST.sig``); ``"env"`` reads the
        configured key (:func:`forecast.signing.signing_key`), None leaves
        the version unsigned.
    _crash_after : str, optional
        Testing hook: raise after writing this file, to prove atomicity.
    """
    root = _registry_dir(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    if signing_key == "env":
        try:
            signing_key = signing.signing_key()
        except signing.SignatureError as exc:
            raise RegistryError(str(exc)) from None
    _clean_stale_tmp(root)
    definition = definition if definition is not None else OutcomeDefinition()
    tmp = root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        written = bundle.save(tmp)
        version = _unused_version_id(root, written)
        env = environment()
        fp = dict(fingerprint or {})
        full_card = model_card.build_card(
            bundle, version=version, definition=definition, training=dict(training or {}),
            fingerprint=fp, metrics=dict(metrics) if metrics else None, environment=env,
        )
        full_card.update(dict(card or {}))
        files = {
            CARD_JSON: dumps(full_card),
            CARD_MD: model_card.render_markdown(full_card),
            METRICS: dumps(dict(metrics) if metrics else {"evaluated": False, "note":
                           "run `forecast evaluate` for cross-validated metrics"}),
            FINGERPRINT: dumps(fp),
            ENVIRONMENT: dumps(env),
            DEFINITION: dumps(definition.to_dict()),
        }
        for name, text in files.items():
            (tmp / name).write_text(text)
            if _crash_after == name:
                raise RuntimeError(f"simulated crash after writing {name}")
        _write_manifest(tmp, version, full_card.get("created_utc"), signing_key)
        _fsync_dir(tmp)
        os.rename(tmp, root / version)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version


def _unused_version_id(root: Path, written: list[Path]) -> str:
    """A version id from the hash of the bundle's files, not yet taken in ``root``."""
    content_hash = hashlib.sha256(
        b"".join(sha256_file(p).encode() for p in written)
    ).hexdigest()
    version = new_version_id(content_hash)
    while (root / version).exists():  # same millisecond and content: step the clock
        time.sleep(0.002)
        version = new_version_id(content_hash)
    return version


def _write_manifest(tmp: Path, version: str, created_utc: Any, signing_key: Any) -> None:
    """Fsync every file in ``tmp``, then write (and sign, given a key) its manifest."""
    entries = {}
    for p in sorted(tmp.iterdir()):
        _fsync_file(p)
        entries[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "version": version,
        "created_utc": created_utc,
        "files": entries,
    }
    (tmp / MANIFEST).write_text(dumps(manifest))
    _fsync_file(tmp / MANIFEST)
    if signing_key is not None:
        (tmp / signing.SIGNATURE).write_text(
            signing.sign((tmp / MANIFEST).read_bytes(), signing_key))
        _fsync_file(tmp / signing.SIGNATURE)


# --------------------------------------------------------------------------- reading
@dataclass
class LoadedModel:
    """A verified registry version."""

    version: str
    path: Path
    card: dict[str, Any]
    bundle: Bundle
    definition: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: ``verified``, ``unsigned`` or ``unchecked`` (signed, no key configured to check it)
    signature: str = "unsigned"

    @property
    def population_curve(self) -> dict[str, list[float]] | None:
        """Population survival curve of the training episodes, if stored."""
        return self.card.get("population_curve")

    @property
    def covariates(self) -> tuple[str, ...]:
        """Extra patient covariates the model was trained with (``--covariate``), in order.

        Loading data for it must declare them (``load_cohort(..., covariates=...)``).
        """
        encoder = self.bundle.encoder
        if encoder is None:
            return ()
        known = set(FEATURES.numeric)
        return tuple(c for c in encoder.numeric if c not in known and not c.endswith("_missing"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RegistryError(f"{path.name}: unreadable or not JSON ({exc})") from exc


def verify(path: str | Path) -> dict[str, Any]:
    """Check a version folder against its manifest; return the manifest.

    Raises :class:`RegistryError` naming the first file that is missing,
    unlisted (foreign), truncated or altered, or a manifest of unknown format.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise RegistryError(f"{path.name}/{MANIFEST}: missing (incomplete or foreign folder)")
    manifest = _read_json(mpath)
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != MANIFEST_FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        raise RegistryError(f"{MANIFEST}: unknown format (not a kap-forecast model version)")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise RegistryError(
            f"{MANIFEST}: format_version {manifest.get('format_version')!r} is not supported"
        )
    if manifest.get("version") != path.name:
        raise RegistryError(f"{MANIFEST}: names version {manifest.get('version')!r}, "
                            f"but the folder is {path.name} (copied or renamed)")
    listed = manifest["files"]
    present = {p.name for p in path.iterdir()} - {MANIFEST, signing.SIGNATURE}
    for name in sorted(present - set(listed)):
        raise RegistryError(f"{name}: file not listed in {MANIFEST} (foreign file)")
    for name in sorted(listed):
        fpath = path / name
        entry = listed[name]
        if not fpath.is_file():
            raise RegistryError(f"{name}: listed in {MANIFEST} but missing")
        if fpath.stat().st_size != entry.get("bytes"):
            raise RegistryError(f"{name}: size differs from {MANIFEST} (truncated or altered)")
        if sha256_file(fpath) != entry.get("sha256"):
            raise RegistryError(f"{name}: checksum mismatch (file altered)")
    for required in (JSON_NAME, NPZ_NAME, CARD_JSON, DEFINITION):
        if required not in listed:
            raise RegistryError(f"{required}: missing from {MANIFEST}")
    return manifest


def check_signature(path: Path, require: bool = False,
                    env: Mapping[str, str] | None = None) -> str:
    """Check the signature of a verified version folder; return its state.

    A signature that is present is checked whenever a key is configured and
    must verify. ``require`` (the service) also refuses a version that is
    unsigned or cannot be checked, unless ``FORECAST_ALLOW_UNSIGNED`` allows it.
    """
    env = dict(os.environ if env is None else env)
    try:
        public = signing.verify_key(env)
        state = signing.check(path, public).state
    except signing.SignatureError as exc:
        raise RegistryError(f"{path.name}: {exc}") from None
    if require and state != "verified" and not signing.allow_unsigned(env):
        why = ("is not signed" if state == "unsigned"
               else "is signed but no verification key is configured")
        raise RegistryError(
            f"{path.name} {why}; configure {signing.VERIFY_FILE_ENV} (or "
            f"{signing.KEY_FILE_ENV}) and train with the key, or set "
            f"{signing.ALLOW_UNSIGNED_ENV}=1 for development (docs/registry.md)"
        )
    return state


def load(ref: str | Path = "latest", models_dir: str | Path | None = None, *,
         require_signature: bool = False, env: Mapping[str, str] | None = None
         ) -> LoadedModel:
    """Resolve ``ref`` in the registry, verify the version and return it.

    Parameters
    ----------
    ref : str or path
        Version id, ``"latest"`` or the path of a version folder inside the registry.
    models_dir : path, optional
        Registry folder (see :func:`models_dir`).
    require_signature : bool
        Refuse a version whose signature is missing or unchecked (the service;
        see :func:`check_signature`). A signature that does not verify is
        refused in any case.
    env : mapping, optional
        Where the key settings are read (default ``os.environ``).
    """
    path = resolve(ref, models_dir)
    verify(path)
    signature = check_signature(path, require_signature, env)
    try:
        bundle = Bundle.load(path)
    except BundleError as exc:
        raise RegistryError(str(exc)) from exc
    card = _read_json(path / CARD_JSON)
    try:
        definition = OutcomeDefinition.from_dict(_read_json(path / DEFINITION))
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{DEFINITION}: not a valid outcome definition ({exc})") from exc
    metrics = _read_json(path / METRICS) if (path / METRICS).is_file() else {}
    fp = _read_json(path / FINGERPRINT) if (path / FINGERPRINT).is_file() else {}
    return LoadedModel(path.name, path, card, bundle, definition, metrics, fp, signature)
