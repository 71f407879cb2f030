"""``forecast train --dask``: the training rows built per part on the workers, the fit on
distributed sums (:mod:`forecast.distributed.fit`), the version saved as on one machine."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from forecast import registry
from forecast.data.partitioned import (
    check_layout,
    check_split_patients,
    is_partitioned,
    part_patient_ids,
)
from forecast.data.problems import ContractError, Problem
from forecast.distributed import DISTRIBUTED_KINDS
from forecast.distributed import parts as P
from forecast.distributed.fit import fit_piecewise
from forecast.models import make_estimator
from forecast.outcomes import OutcomeDefinition
from forecast.training import population_curve, registry_and_key, spec_of

_SUMMED = ("patients", "patients_with_episodes", "episodes", "episodes_with_observed_waning",
           "landmark_rows", "forecast_point_rows", "training_rows")


def check_kind(kind: str) -> None:
    """Raise ValueError when ``kind`` cannot be fitted on distributed sums."""
    if kind not in DISTRIBUTED_KINDS:
        raise ValueError(f"--kind {kind} needs one machine: only {', '.join(DISTRIBUTED_KINDS)} "
                         "trains on a Dask cluster (run without --dask, or use --kind piecewise)")


def part_names(folder: Path) -> list[str]:
    """The parts of the partitioned dataset ``folder``; ContractError for a bad layout."""
    if not is_partitioned(folder):
        raise ContractError([Problem(str(folder), None, None, "--dask needs a partitioned "
                                     "dataset (a folder of parts per table); write one with "
                                     "`forecast partition` or `forecast simulate "
                                     "--patients-per-part`")])
    parts, problems = check_layout(folder)
    if problems:
        raise ContractError(problems)
    return parts


def load_parts(client: Any, folder: Path, kind: str, covariates: Sequence[str] = (),
               today: date | None = None, definition: Any = None
               ) -> tuple[list[Any], list[dict[str, Any]]]:
    """Validate every part and build its training rows on the workers.

    Returns the futures of the parts' rows and their summaries (no rows).
    Raises ContractError with every part's problems (each names its part file),
    and with the patients found in more than one part.
    """
    parts = part_names(folder)
    cov = tuple(dict.fromkeys(covariates))
    rows = [client.submit(P.part_rows, str(folder), part, kind, cov, today, definition)
            for part in parts]
    summaries = client.gather([client.submit(P.part_summary, r) for r in rows])
    problems = [p for s in summaries if isinstance(s, list) for p in s]
    ids = client.gather([client.submit(part_patient_ids, str(folder), part) for part in parts])
    problems += check_split_patients(folder, parts, ids)
    if problems:
        raise ContractError(problems)
    return rows, summaries


def merged_summary(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The one-machine training summary from the parts' summaries."""
    out: dict[str, Any] = {k: int(sum(s["summary"][k] for s in summaries)) for k in _SUMMED}
    days = {int(d) for s in summaries for d in s["summary"]["landmarks_days"]}
    out["landmarks_days"] = sorted(days)
    return out


def fingerprint(summaries: Sequence[dict[str, Any]], **counts: int) -> dict[str, Any]:
    """The registry fingerprint of a partitioned dataset: sha256 over the parts' sha256."""
    h = hashlib.sha256()
    for s in summaries:
        h.update(s["fingerprint"].encode())
    totals = {t: int(sum(s["counts"][t] for s in summaries))
              for t in ("patients", "sessions", "assessments")}
    return {"sha256": h.hexdigest(),
            "algorithm": "sha256 over the parts' fingerprints, in part order "
                         "(forecast.distributed.train.fingerprint)",
            "counts": {**totals, **{k: int(v) for k, v in counts.items()}}}


def fit_dask(client: Any, folder: Path, kind: str = "piecewise", *, n_bootstrap: int = 30,
             seed: int = 0, penalizer: float | str = "auto", covariates: Sequence[str] = (),
             definition: Any = None) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Fit ``kind`` on the partitioned dataset ``folder``: (estimator, summary, part summaries)."""
    check_kind(kind)
    rows, summaries = load_parts(client, folder, kind, covariates, definition=definition)
    summary = merged_summary(summaries)
    if summary["episodes"] == 0:
        raise ValueError("no response episodes in the data: nothing to train on")
    spec = spec_of(SimpleNamespace(covariates=tuple(dict.fromkeys(covariates))))
    est = make_estimator(kind, features=spec, n_bootstrap=n_bootstrap, random_state=seed,
                         n_jobs=1, penalizer=penalizer)
    fit_piecewise(client, rows, est, [s["info"] for s in summaries])
    return est, summary, summaries


def train_and_save_dask(
    client: Any, folder: Path, models_dir: Any = None, *, kind: str = "piecewise",
    n_bootstrap: int = 30, seed: int = 0, penalizer: float | str = "auto",
    covariates: Sequence[str] = (), definition: Any = None, simulated: bool = False,
    progress: Callable[[str], None] | None = None,
) -> str:
    """:func:`forecast.training.train_and_save` on a Dask cluster; returns the version id."""
    step = progress or (lambda stage: None)
    check_kind(kind)
    root, key = registry_and_key(models_dir)
    definition = definition if definition is not None else OutcomeDefinition()
    step(f"features per part, fit {kind} (+{n_bootstrap} bootstrap) on Dask")
    est, summary, summaries = fit_dask(client, folder, kind, n_bootstrap=n_bootstrap, seed=seed,
                                       penalizer=penalizer, covariates=covariates,
                                       definition=definition)
    bundle = est.to_bundle()
    bundle.meta["estimator"] = {
        k: v for k, v in est.get_params().items() if k not in ("features", "n_jobs")
    }
    step("save")
    training = {**summary, "kind": kind, "bootstrap": int(n_bootstrap), "seed": int(seed),
                "simulated_data": bool(simulated), "fit_warnings": len(est.fit_warnings_),
                "dask": {"parts": len(summaries), "workers": len(client.nthreads())}}
    fp = fingerprint(summaries, episodes=summary["episodes"],
                     landmark_rows=summary["landmark_rows"])
    bounds = np.concatenate([s["start_bounds"] for s in summaries])
    curve = population_curve(bounds[:, 0], bounds[:, 1])
    return registry.save_version(
        bundle, models_dir=root, definition=definition, fingerprint=fp, training=training,
        card={"population_curve": curve}, signing_key=key,
    )
