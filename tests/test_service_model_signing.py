"""Signed versions and the plausibility check: what the service refuses to serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from forecast import lifecycle, plausibility, registry, signing
from service.errors import ApiProblem
from tests.fixtures.service import AppFactory, assert_problem, client_for


@pytest.fixture
def models(tmp_path: Path, service_models: Path) -> Path:
    dest = tmp_path / "models"
    shutil.copytree(service_models, dest)
    return dest


def _resave(models: Path, *, signing_key="env") -> str:
    """A new version of the session's trained bundle (cheap: no training)."""
    loaded = registry.load(registry.list_versions(models)[0], models)
    return registry.save_version(loaded.bundle, models_dir=models, definition=loaded.definition,
                                 signing_key=signing_key)


def _lower_baseline_and_fix_manifest(version_dir: Path) -> None:
    """The attack of issue 21: lower the baseline hazard, rewrite the manifest's sha256."""
    npz = version_dir / "bundle.npz"
    arrays = dict(np.load(npz))
    for key in ("log_base", "boot_log_base"):
        arrays[key] = arrays[key] - 40.0  # every hazard ~0: every risk 0.0
    with npz.open("wb") as fh:
        np.savez(fh, **arrays)
    manifest = json.loads((version_dir / "MANIFEST.json").read_text())
    manifest["files"]["bundle.npz"] = {"sha256": registry.sha256_file(npz),
                                       "bytes": npz.stat().st_size}
    (version_dir / "MANIFEST.json").write_text(registry.dumps(manifest))


def test_rewritten_bundle_and_manifest_is_refused(make_app: AppFactory, models: Path) -> None:
    first = registry.list_versions(models)[-1]
    c = client_for(make_app(models=models))
    second = _resave(models)
    _lower_baseline_and_fix_manifest(models / second)
    registry.verify(models / second)  # the checksums alone are self-attested: they pass
    with pytest.raises(registry.RegistryError, match="signature does not match"):
        registry.load(second, models)
    problem = assert_problem(c.post("/api/v1/model/reload", role="admin"), 409)
    assert "signature does not match" in problem["detail"]
    assert first in problem["detail"]
    assert c.get("/api/v1/model").json["version"] == first


def test_signature_removed_then_unsigned_is_refused_unless_allowed(
    make_app: AppFactory, models: Path, monkeypatch
) -> None:
    first = registry.list_versions(models)[-1]
    second = _resave(models)
    _lower_baseline_and_fix_manifest(models / second)
    (models / second / signing.SIGNATURE).unlink()
    c = client_for(make_app(models=models))
    problem = assert_problem(c.post("/api/v1/model/reload", role="admin"), 409)
    assert "is not signed" in problem["detail"]
    # Development allowance: unsigned loads, but the plausibility check still refuses it.
    dev = make_app(models=models, KAP_ALLOW_UNSIGNED_MODELS=True).extensions["kap_model"]
    with pytest.raises(ApiProblem) as refused:
        dev.reload()
    assert "predicts nonsense" in refused.value.detail
    assert dev.version == first


def test_unsigned_version_serves_with_the_development_allowance(
    make_app: AppFactory, models: Path
) -> None:
    unsigned = _resave(models, signing_key=None)
    assert not (models / unsigned / signing.SIGNATURE).exists()
    strict = make_app(models=models).extensions["kap_model"]
    assert strict.version != unsigned  # the newest that loads is the signed one
    dev = make_app(models=models, KAP_ALLOW_UNSIGNED_MODELS=True).extensions["kap_model"]
    assert dev.version == unsigned


def test_version_signed_with_another_key_is_refused(models: Path, tmp_path: Path) -> None:
    other, _ = signing.generate(tmp_path / "other.key")
    version = _resave(models, signing_key=signing.signing_key(
        {signing.KEY_FILE_ENV: str(other)}))
    with pytest.raises(registry.RegistryError, match="not the configured key"):
        registry.load(version, models)
    # A service holding only the public key of the right signer verifies its versions.
    key_file = tmp_path / "right.key"
    _, right_pub = signing.generate(key_file)
    right = _resave(models, signing_key=signing.signing_key(
        {signing.KEY_FILE_ENV: str(key_file)}))
    env = {signing.VERIFY_FILE_ENV: str(right_pub)}
    assert registry.load(right, models, require_signature=True, env=env).signature == "verified"
    with pytest.raises(registry.RegistryError):
        registry.load(version, models, require_signature=True, env=env)


def test_no_key_configured_refuses_signed_but_unchecked_versions(models: Path) -> None:
    version = registry.list_versions(models)[-1]
    with pytest.raises(registry.RegistryError, match="no verification key is configured"):
        registry.load(version, models, require_signature=True, env={})
    # Offline commands still read it (the signature is reported as unchecked).
    assert registry.load(version, models, env={}).signature == "unchecked"


def test_plausibility_accepts_the_trained_model_and_refuses_nonsense(models: Path) -> None:
    loaded = registry.load("latest", models)
    figures = plausibility.check(loaded)
    assert figures["answers"] >= plausibility.MIN_ANSWERS
    version = _resave(models, signing_key=None)
    _lower_baseline_and_fix_manifest(models / version)
    bad = registry.load(version, models, env={})
    with pytest.raises(plausibility.ImplausibleModel, match="predicts nonsense"):
        plausibility.check(bad)


def test_the_service_follows_the_promoted_version_not_latest(make_app: AppFactory,
                                                             models: Path) -> None:
    first = registry.list_versions(models)[-1]
    second = _resave(models)
    summary = {"by_horizon": {"28": {"ici": 0.01, "citl": 0.0}, "56": {"ici": 0.01,
                                                                     "citl": 0.0}}}
    for v in (first, second):
        lifecycle._append(models, lifecycle._event("evaluated", v, "t", evaluation_id=v[-4:],
                                                   summary=summary))
        lifecycle.approve(models, v, actor="t")
    lifecycle.promote(models, first, actor="t")
    c = client_for(make_app(models=models))
    assert c.get("/api/v1/model").json["version"] == first  # not the newer `latest`
    _resave(models)  # a third, newer, never promoted
    lifecycle.promote(models, second, actor="t")
    resp = c.post("/api/v1/model/reload", role="admin")
    assert resp.status_code == 200
    assert resp.json["version"] == second
    lifecycle.promote(models, first, actor="t")  # back to the previous one
    assert c.post("/api/v1/model/reload", role="admin").json["version"] == first
