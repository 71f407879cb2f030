"""What a Dask worker computes on one part (plain functions of plain data; no Dask here).

Each function takes one part's data and returns that part's contribution: the
training rows, the encoder's sufficient statistics, the design, and the
piecewise likelihood's sums at a ``theta``. Only parameter-sized arrays (and
a few counts) go back to the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast.absent import mask_optional_inputs
from forecast.bundle import Encoder
from forecast.data.partitioned import check_part
from forecast.data.problems import Problem
from forecast.models.base import _prepare_bounds, check_bounds
from forecast.models.landmark import varying_within
from forecast.models.piecewise import (
    PiecewiseExponentialModel,
    pwe_data_sums,
    pwe_hessian_sums,
)


@dataclass
class PartRows:
    """One part's training rows (``forecast.training.training_data`` of the part)."""

    X: pd.DataFrame
    lower: np.ndarray
    upper: np.ndarray
    groups: np.ndarray
    summary: dict[str, Any]
    start_bounds: np.ndarray  # (episodes, 2): landmark-0 (lower, upper), the card's curve
    fingerprint: str
    counts: dict[str, int]  # rows of each table


@dataclass
class PartInfo:
    """What the client needs to know of a part's rows (no rows)."""

    n_rows: int
    n_events: int
    n_groups: int
    first_key: tuple[str, float] | None
    last_key: tuple[str, float] | None


def part_rows(folder: str, part: str, kind: str, covariates: tuple[str, ...],
              today: date | None, definition: Any = None) -> PartRows | list[Problem]:
    """Validate and load part ``part`` of ``folder``; its training rows, or its problems."""
    from forecast.registry import fingerprint_frames
    from forecast.training import training_data

    cohort, problems = check_part(Path(folder), part, covariates=covariates, today=today)
    if cohort is None:
        return problems
    data = training_data(cohort, kind, definition)
    ld0 = data.X[data.X["landmark"] == 0] if "landmark" in data.X else data.X
    bounds = np.column_stack([ld0["lower"].to_numpy(float), ld0["upper"].to_numpy(float)])
    frames = {t: getattr(cohort, t) for t in ("patients", "sessions", "assessments")}
    return PartRows(data.X.reset_index(drop=True), data.lower, data.upper, data.groups,
                    data.summary, bounds, fingerprint_frames(frames),
                    {t: len(f) for t, f in frames.items()})


def part_summary(rows: PartRows | list[Problem]) -> dict[str, Any] | list[Problem]:
    """The part's problems, or what the client records of it (counts, no rows)."""
    if isinstance(rows, list):
        return rows
    return {"summary": rows.summary, "fingerprint": rows.fingerprint, "counts": rows.counts,
            "info": part_info(rows), "start_bounds": rows.start_bounds}


def part_info(rows: PartRows) -> PartInfo:
    """Counts and the first/last (episode_id, landmark) key of the part's rows."""
    X = rows.X
    keys = None
    if len(X) and "episode_id" in X and "landmark" in X:
        e = X["episode_id"].astype(str).to_numpy()
        lm = X["landmark"].to_numpy(float)
        keys = ((e[0], float(lm[0])), (e[-1], float(lm[-1])))
    codes = pd.factorize(rows.groups)[0]
    return PartInfo(len(X), int(np.isfinite(rows.upper).sum()),
                    int(codes.max()) + 1 if codes.size else 0,
                    keys[0] if keys else None, keys[1] if keys else None)


@dataclass
class Prepared:
    """A part's rows as the estimator fits them: masked features, prepared bounds, groups."""

    X: pd.DataFrame
    lo: np.ndarray
    up: np.ndarray
    codes: np.ndarray  # the part's patients, 0.. in order of first appearance


def prepare(rows: PartRows, est: PiecewiseExponentialModel, offset: int, total: int) -> Prepared:
    """Mask the optional inputs with the whole frame's draws (rows ``offset..``) and prepare
    the bounds, as :meth:`PiecewiseExponentialModel.fit` does on one machine."""
    seed = est.random_state if isinstance(est.random_state, int | np.integer) else 0
    X = mask_optional_inputs(rows.X, float(est.absent_share), int(seed),
                             float(est.absent_joint_share), offset=offset, total=total)
    X = X.reset_index(drop=True)
    lo, up = check_bounds(rows.lower, rows.upper, len(X))
    lo, up = _prepare_bounds(lo, up, log_time=True)
    return Prepared(X, lo, up, pd.factorize(rows.groups)[0])


def varying(p: Prepared, names: tuple[str, ...]) -> tuple[str, ...]:
    """The features of ``names`` that change within some episode of the part."""
    return varying_within(p.X, names)


# ---------------------------------------------------------------- encoder statistics
def numeric_block(X: pd.DataFrame, numeric: tuple[str, ...]) -> np.ndarray:
    from forecast.bundle.encoder import _numeric_block

    return _numeric_block(X, numeric)


def stats_first(p: Prepared, numeric: tuple[str, ...], categorical: dict[str, tuple[str, ...]]
                ) -> dict[str, Any]:
    """Pass 1 of the encoder: non-missing sums and counts, and category level counts."""
    num = numeric_block(p.X, numeric)
    counts = {}
    for name, levels in categorical.items():
        values = p.X[name].to_numpy(dtype=object)
        counts[name] = (values[:, None] == np.asarray(levels, dtype=object)[None, :]).sum(axis=0)
    return {"n": len(p.X), "sum": np.nansum(num, axis=0), "count": (~np.isnan(num)).sum(axis=0),
            "levels": counts}


def _filled(p: Prepared, numeric: tuple[str, ...], means: np.ndarray, time_feature: str | None,
            inter: tuple[str, ...]) -> np.ndarray:
    num = numeric_block(p.X, numeric)
    filled = np.where(np.isnan(num), means[:len(numeric)], num)
    if inter:
        names = list(numeric)
        lt = np.log1p(np.maximum(filled[:, names.index(str(time_feature))], 0.0))
        filled = np.hstack([filled, filled[:, [names.index(f) for f in inter]] * lt[:, None]])
    return filled


def stats_sums(p: Prepared, numeric: tuple[str, ...], means: np.ndarray,
               time_feature: str | None, inter: tuple[str, ...]) -> np.ndarray:
    """Pass 2: column sums of the filled numeric block (and the interaction columns)."""
    return _filled(p, numeric, means, time_feature, inter).sum(axis=0)


def stats_squares(p: Prepared, numeric: tuple[str, ...], means: np.ndarray,
                  time_feature: str | None, inter: tuple[str, ...]) -> np.ndarray:
    """Pass 3: sums of squared deviations from the (whole-data) column means."""
    d = _filled(p, numeric, means, time_feature, inter) - means
    return (d * d).sum(axis=0)


def design_moments(p: Prepared, enc: Encoder) -> tuple[np.ndarray, np.ndarray]:
    """Pass 4: column sums and sums of squares of the design (its variance: active columns)."""
    z = enc.transform(p.X)
    return z.sum(axis=0), (z * z).sum(axis=0)


# ---------------------------------------------------------------- the design and its sums
@dataclass
class Design:
    """A part's piecewise design: active columns, window exposures, events, patient codes."""

    Z: np.ndarray
    exp_lo: np.ndarray
    exp_up: np.ndarray
    event: np.ndarray
    codes: np.ndarray


def design(p: Prepared, est: PiecewiseExponentialModel) -> Design:
    """The part's design under the fitted encoder (``est.encoder_``)."""
    Z = np.ascontiguousarray(est.encoder_.transform(p.X)[:, est.encoder_.active])
    exp_lo, exp_up, event = est._rows(p.X, p.lo, p.up)
    return Design(Z, exp_lo, exp_up, event, p.codes)


def design_totals(d: Design) -> dict[str, Any]:
    """Events, exposure (the Newton start) and the active columns' sums and squares."""
    exposure = np.where(d.event[:, None], 0.5 * (d.exp_lo + d.exp_up), d.exp_lo).sum(axis=0)
    return {"events": float(d.event.sum()), "exposure": float(exposure.sum()),
            "zsum": d.Z.sum(axis=0), "zsq": (d.Z * d.Z).sum(axis=0), "n": len(d.Z)}


def _weighted(d: Design, counts: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The part's rows with their weights (all 1, or a bootstrap's patient counts; rows of
    weight 0 dropped, as :meth:`forecast.models.piecewise.LocalPwe.reweighted`)."""
    if counts is None:
        return d.Z, d.exp_lo, d.exp_up, d.event, np.ones(len(d.Z))
    w = counts[d.codes].astype(float)
    keep = w > 0
    return d.Z[keep], d.exp_lo[keep], d.exp_up[keep], d.event[keep], w[keep]


def value_grad_sums(theta: np.ndarray, d: Design, counts: np.ndarray | None
                    ) -> tuple[float, float, np.ndarray]:
    """(total weight, negative log-likelihood sum, gradient sum) of the part at ``theta``."""
    Z, lo, up, ev, w = _weighted(d, counts)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        nll, grad = pwe_data_sums(theta, Z, lo, up, ev, w)
    return float(w.sum()), nll, grad


def hessian_sums(theta: np.ndarray, d: Design, counts: np.ndarray | None) -> np.ndarray:
    """The part's Hessian sum at ``theta``."""
    Z, lo, up, ev, w = _weighted(d, counts)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return pwe_hessian_sums(theta, Z, lo, up, ev, w)
