"""The piecewise fit on a Dask cluster: the same Newton, the data term summed over parts.

The client holds only parameter-sized arrays: each Newton step sends
``theta`` to every part's task (:mod:`forecast.distributed.parts`), which
returns its sums of the negative log-likelihood, gradient and Hessian; the
client adds them in part order, divides by the total weight and adds the
penalty (:func:`forecast.models.piecewise.pwe_combine`, the one-machine code).
The row order of the whole dataset is the parts' rows concatenated in part
order, which is the order one machine sorts them in (checked), so the
optional-input masks and the bootstrap's patient draws are the same row for
row and the fit equals the one-machine fit (to rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forecast.bundle import Encoder
from forecast.bundle.encoder import _MIN_VARIANCE
from forecast.distributed import parts as P
from forecast.models.base import ModelFitError
from forecast.models.piecewise import (
    PiecewiseExponentialModel,
    PwePenalty,
    _pwe_refit,
    pwe_combine,
    pwe_start,
)


@dataclass
class DaskPwe:
    """The penalised piecewise objective summed over the parts' designs (Dask futures).

    ``counts`` (one future per part, or None for weight 1) are a bootstrap's
    patient counts; see :class:`forecast.models.piecewise.PweObjective`.
    """

    client: Any
    designs: Sequence[Any]
    penalty: PwePenalty
    counts: Sequence[Any] | None = None
    evaluations: list[int] = field(default_factory=lambda: [0])
    weight: list[float | None] = field(default_factory=lambda: [None])

    def _map(self, fn: Any, theta: np.ndarray) -> list[Any]:
        self.evaluations[0] += 1
        counts = self.counts or [None] * len(self.designs)
        futures = [self.client.submit(fn, theta, d, c, pure=False)
                   for d, c in zip(self.designs, counts, strict=True)]
        return self.client.gather(futures)

    def _sums(self, theta: np.ndarray) -> tuple[float, float, np.ndarray]:
        out = self._map(P.value_grad_sums, theta)
        sw = sum(o[0] for o in out)
        nll = sum(o[1] for o in out)
        grad = np.sum([o[2] for o in out], axis=0)
        return sw, nll, grad

    def value_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        sw, nll, grad = self._sums(theta)
        f, g = pwe_combine(sw, nll, grad, theta, self.penalty)
        return float(f), g

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        H = np.sum(self._map(P.hessian_sums, theta), axis=0)
        return H / self._total_weight() + self.penalty(theta)[2]

    def _total_weight(self) -> float:
        if self.weight[0] is None:
            counts = self.counts or [None] * len(self.designs)
            self.weight[0] = float(sum(self.client.gather(
                [self.client.submit(_weight_of, d, c, pure=False)
                 for d, c in zip(self.designs, counts, strict=True)])))
        return float(self.weight[0])

    def log_likelihood(self, theta: np.ndarray) -> float:
        return -self._sums(theta)[1]

    def reweighted(self, counts: Sequence[Any]) -> DaskPwe:  # type: ignore[override]
        """The objective with a bootstrap's patient counts (one future per part)."""
        return DaskPwe(self.client, self.designs, self.penalty, counts, self.evaluations)


def _weight_of(d: P.Design, counts: np.ndarray | None) -> float:
    return float(len(d.Z)) if counts is None else float(counts[d.codes].sum())


# ---------------------------------------------------------------- the steps of the fit
def check_order(infos: Sequence[P.PartInfo]) -> None:
    """The parts' rows, concatenated in part order, must be in the one-machine row order
    (sorted by episode id and landmark); parts written by ``forecast partition`` are."""
    last = None
    for k, info in enumerate(infos):
        if info.first_key is None:
            continue
        if last is not None and not last < info.first_key:
            raise ValueError(f"part {k} holds episodes that sort before those of an earlier "
                             "part; write the dataset with `forecast partition` (patients "
                             "in the order of their sorted ids)")
        last = info.last_key


def interactions(client: Any, prepared: Sequence[Any], est: PiecewiseExponentialModel,
                 numeric: tuple[str, ...]) -> tuple[str, ...]:
    """``LandmarkAFT._interactions`` over all parts (a feature varying in any part's episode)."""
    t, spec = est.time_feature, est.time_interactions
    if t is None or spec is None or t not in numeric:
        return ()
    if spec != "dynamic":
        if isinstance(spec, str):
            raise ValueError("time_interactions must be 'dynamic', None or a tuple of names")
        return tuple(f for f in spec if f in numeric and f != t)
    names = tuple(f for f in numeric if f != t)
    found = client.gather([client.submit(P.varying, p, names) for p in prepared])
    return tuple(f for f in names if any(f in v for v in found))


def fit_encoder(client: Any, prepared: Sequence[Any], numeric: tuple[str, ...],
                categorical: dict[str, tuple[str, ...]], time_feature: str | None,
                inter: tuple[str, ...]) -> Encoder:
    """:meth:`forecast.bundle.Encoder.fit` from the parts' sufficient statistics (4 passes)."""
    first = client.gather([client.submit(P.stats_first, p, numeric, categorical)
                           for p in prepared])
    n = sum(s["n"] for s in first)
    count = np.sum([s["count"] for s in first], axis=0)
    total = np.sum([s["sum"] for s in first], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(count > 0, total / np.maximum(count, 1), 0.0) if numeric else np.zeros(0)
    tf = time_feature if inter else None
    if inter:
        sums = np.sum(client.gather([client.submit(P.stats_sums, p, numeric, means, tf, inter)
                                     for p in prepared]), axis=0)
        means = np.r_[means, sums[len(numeric):] / max(n, 1)]
    sq = np.sum(client.gather([client.submit(P.stats_squares, p, numeric, means, tf, inter)
                               for p in prepared]), axis=0)
    scales = np.sqrt(sq / n) if n else np.ones(len(means))
    scales = np.where(scales > np.sqrt(_MIN_VARIANCE), scales, 1.0)
    references, level_means = {}, {}
    for name, levels in categorical.items():
        counts = np.sum([s["levels"][name] for s in first], axis=0)
        ref = levels[int(np.argmax(counts))] if counts.sum() > 0 else None
        references[name] = ref
        keep = [i for i, lv in enumerate(levels) if lv != ref]
        level_means[name] = counts[keep] / n if n else np.zeros(len(keep))
    enc = Encoder(tuple(numeric), means, scales, dict(categorical), references, level_means,
                  time_feature=tf, time_interactions=inter)
    moments = client.gather([client.submit(P.design_moments, p, enc) for p in prepared])
    zs = np.sum([m[0] for m in moments], axis=0)
    zq = np.sum([m[1] for m in moments], axis=0)
    enc.active = (zq / n - (zs / n) ** 2) > _MIN_VARIANCE if n else np.zeros(len(zs), bool)
    return enc


def _check_rows(est: PiecewiseExponentialModel, infos: Sequence[P.PartInfo]) -> None:
    """The checks and counts of ``SurvivalEstimator.fit`` over all parts."""
    n_rows = sum(i.n_rows for i in infos)
    if n_rows == 0:
        raise ModelFitError("no rows to fit")
    if sum(i.n_events for i in infos) == 0:
        raise ModelFitError("no events (every row is right-censored): nothing to learn from")
    if est.n_bootstrap < 0:
        raise ValueError("n_bootstrap must be >= 0")
    if est.penalizer != "auto" and not float(est.penalizer) >= 0:
        raise ValueError("penalizer must be 'auto' or a number >= 0")
    est.penalizer_ = 0.01 if est.penalizer == "auto" else float(est.penalizer)
    est.n_rows_ = n_rows
    est.n_events_ = sum(i.n_events for i in infos)
    est.n_groups_ = sum(i.n_groups for i in infos)
    est.fit_warnings_ = []


def fit_piecewise(client: Any, rows: list[Any], est: PiecewiseExponentialModel,
                  infos: Sequence[P.PartInfo]) -> PiecewiseExponentialModel:
    """Fit ``est`` (unfitted) on the parts' training rows (futures of :class:`PartRows`).

    ``rows`` is consumed (emptied), so the workers can free the raw rows once prepared.
    """
    check_order(infos)
    _check_rows(est, infos)
    offsets = np.r_[0, np.cumsum([i.n_rows for i in infos])]
    total = int(offsets[-1])
    prepared = [client.submit(P.prepare, r, est, int(o), total)
                for r, o in zip(rows, offsets[:-1], strict=False)]
    rows.clear()  # the parts' raw rows go once prepared: their memory is the workers'
    est._check_penalties()
    numeric, categorical = est._spec()
    inter = interactions(client, prepared, est, numeric)
    est.encoder_ = fit_encoder(client, prepared, numeric, categorical, est.time_feature, inter)
    designs = [client.submit(P.design, p, est) for p in prepared]
    del prepared
    totals = client.gather([client.submit(P.design_totals, d) for d in designs])
    p = int(est.encoder_.active.sum())
    scale = np.ones(p)
    if est.penalty_scale == "sd" and total >= 2:
        zs = np.sum([t["zsum"] for t in totals], axis=0)
        zq = np.sum([t["zsq"] for t in totals], axis=0)
        sd = np.sqrt(np.maximum(zq - zs * zs / total, 0.0) / (total - 1))
        scale = np.where(sd > 1e-8, sd, 1.0)
    objective = DaskPwe(client, designs, est._pwe_penalty(scale))
    theta0 = pwe_start(sum(t["events"] for t in totals), sum(t["exposure"] for t in totals),
                       est._edges().size, p)
    est._fit_objective(objective, theta0)
    est.bootstrap_ = {}
    if est.n_bootstrap > 0:
        est.bootstrap_ = _bootstrap(client, est, objective, infos)
    est.__dict__.pop("_chol", None)
    return est


def _bootstrap(client: Any, est: PiecewiseExponentialModel, objective: DaskPwe,
               infos: Sequence[P.PartInfo]) -> dict[str, np.ndarray]:
    """The patient-level bootstrap refits, each an L-BFGS whose evaluations are Dask tasks.

    The patient counts are drawn exactly as ``forecast.models.base._bootstrap_weights``
    draws them (patients numbered in row order) and sent to each part as its slice.
    """
    n_groups = sum(i.n_groups for i in infos)
    rng = np.random.default_rng(est.random_state)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups),
                             size=int(est.n_bootstrap))
    g = np.r_[0, np.cumsum([i.n_groups for i in infos])]
    refits = []
    for b in range(int(est.n_bootstrap)):
        slices = client.scatter([counts[b, g[k]:g[k + 1]] for k in range(len(infos))])
        refits.append(objective.reweighted(slices))
    threads = max(1, min(len(refits), 2 * sum(client.nthreads().values())))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        thetas = list(pool.map(
            lambda obj: _pwe_refit(est.theta_, est._chol, obj, est.max_iter), refits))
    return est._bootstrap_arrays(thetas)
