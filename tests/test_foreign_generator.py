"""The foreign generator (tests/fixtures/foreign_generator.py) follows the data contract
and its PHQ-9 trajectory agrees with the project's outcome definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecast.data import load_cohort
from forecast.episodes import build_episodes
from tests.fixtures import foreign_generator as fg


def test_foreign_cohort_loads_and_has_episodes(tmp_path: Path) -> None:
    frames = fg.generate(300, seed=3, end="2026-06-30")
    fg.write(frames, tmp_path)
    cohort = load_cohort(tmp_path)  # raises ContractError on any contract problem
    assert len(cohort.patients) == 300
    a = frames["assessments"]
    # clinic mix: totals-only rows, item rows, rows without C-SSRS
    assert a["phq9_total"].notna().any()
    assert a["phq9_1"].notna().any()
    assert a["cssrs_ideation"].isna().any()
    assert a["cssrs_ideation"].notna().any()
    ep = build_episodes(cohort)
    assert len(ep) > 300
    assert 0.2 < ep["event"].mean() < 0.9


def test_foreign_oracle_risk_is_a_conditional_weibull_probability() -> None:
    t = np.array([0.0, 10.0, 50.0])
    r = fg.conditional_risk(t, 28, np.full(3, np.log(40.0)))
    assert np.all((r > 0) & (r < 1))
    assert np.all(np.diff(r) > 0)  # shape > 1: the hazard rises with time
    assert np.isclose(r[0], fg.weibull_cdf(np.array([28.0]), np.log(40.0))[0])


def test_foreign_generator_is_seeded() -> None:
    a = fg.generate(50, seed=5)["assessments"]
    b = fg.generate(50, seed=5)["assessments"]
    pd.testing.assert_frame_equal(a, b)


def test_depth_oracle_integrates_the_frailty_given_the_depth() -> None:
    """Gauss-Hermite risk against scipy's adaptive quadrature over z | depth, T > t_seen."""
    from scipy import integrate, stats

    var_d = fg.DEPTH_SLOPE**2 * fg.FRAILTY_SD**2 + fg.DEPTH_SD**2
    cov = fg.DEPTH_SLOPE * fg.FRAILTY_SD**2
    for depth, t_seen, t_until, ls in ((0.2, 10.0, 40.0, 3.4), (0.45, 0.0, 28.0, 3.8)):
        mu = cov / var_d * (depth - fg.DEPTH_MEAN)
        sd = np.sqrt(fg.FRAILTY_SD**2 - cov**2 / var_d)

        def surv(t: float, z: float, ls: float = ls) -> float:
            return float(np.exp(-((t / np.exp(ls + z)) ** fg.SHAPE)))

        def dens(z: float, mu: float = mu, sd: float = sd) -> float:
            return float(stats.norm.pdf(z, mu, sd))

        def lost(z: float, a: float = t_seen, b: float = t_until) -> float:
            return (surv(a, z) - surv(b, z)) * dens(z)

        def kept(z: float, a: float = t_seen) -> float:
            return surv(a, z) * dens(z)

        num = integrate.quad(lost, -4, 4)[0]
        den = integrate.quad(kept, -4, 4)[0]
        got = fg.depth_oracle_risk(np.array([t_seen]), np.array([t_until]), np.array([ls]),
                                   np.array([depth]))[0]
        assert got == pytest.approx(num / den, abs=1e-6)


@pytest.mark.slow
def test_trained_model_is_calibrated_on_the_foreign_generator(tmp_path: Path) -> None:
    """forecast train + predict on another generator's cohorts: the mean 28/56-day risk
    is within 0.04 of the rate of the generator's latent truth (tests/fixtures/foreign_check.py)."""
    import json

    from tests.fixtures import foreign_check as fc

    out = tmp_path / "fc.json"
    assert fc.main(["--train", "3000", "--test", "3000", "--seed", "7", "--jobs", "1",
                    "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["horizons"]
    for h in ("28d", "56d"):
        r = rows[h]
        assert r["n_usable"] > 500
        assert abs(r["mean_pred"] - r["latent_rate_evaluated"]) <= 0.04, (h, r)
        # and it discriminates: well above chance on the latent outcome
        assert r["auc_model_truth"] > 0.62, (h, r)
