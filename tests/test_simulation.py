"""Tests of the simulator: determinism, contract, calibration to its sources, mechanism."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from forecast.cli import main
from forecast.cohort import canonicalize
from forecast.contract import HORIZONS, PHQ9_ITEMS, TABLES
from forecast.data import load_cohort
from forecast.simulation import (
    TRUTH_COLUMNS,
    SimulationParams,
    SimulationResult,
    read_truth,
    simulate,
    summarize,
    true_risk,
    truth_location,
    write_simulation,
)

RISKS = [f"risk_{h}d" for h in HORIZONS]


# --- independent re-implementations of the downstream rules (not the code under test) ---
def phq9_total(a: pd.DataFrame) -> pd.Series:
    """PHQ-9 total: items prorated when at most two are missing, else the given total."""
    items = a[list(PHQ9_ITEMS)].astype(float)
    answered = items.notna().sum(axis=1)
    prorated = np.floor(items.sum(axis=1) * 9 / answered.replace(0, np.nan) + 0.5)
    return prorated.where(answered >= 7, a["phq9_total"].astype(float))


def induction_response(sessions: pd.DataFrame, assessments: pd.DataFrame) -> pd.DataFrame:
    """Baseline (last PHQ-9 on or before the first induction, <= 30 days before) and the
    first PHQ-9 within 14 days after the last induction session, per measurable patient."""
    ind = sessions[sessions["kind"] == "induction"]
    span = ind.groupby("patient_id")["date"].agg(first="min", last="max")
    a = assessments.assign(phq9=phq9_total(assessments)).dropna(subset=["phq9"])
    a = a.merge(span, left_on="patient_id", right_index=True)
    pre = a[(a["date"] <= a["first"]) & (a["date"] >= a["first"] - pd.Timedelta(days=30))]
    post = a[(a["date"] > a["last"]) & (a["date"] <= a["last"] + pd.Timedelta(days=14))]
    baseline = pre.sort_values("date").groupby("patient_id")["phq9"].last()
    after = post.sort_values("date").groupby("patient_id")["phq9"].first()
    out = pd.concat([baseline.rename("baseline"), after.rename("after")], axis=1).dropna()
    return out.assign(response=out["after"] <= 0.5 * out["baseline"])


def tag_episodes(result: SimulationResult) -> pd.DataFrame:
    """Assessments after a truth episode's start and before the next session, with
    ``u`` (days since the start), the latent wane time and the patient's baseline."""
    c = result.cohort
    a = c.assessments.assign(phq9=phq9_total(c.assessments)).sort_values("date")
    s = c.sessions[["patient_id", "date"]].assign(session_date=c.sessions["date"])
    a = pd.merge_asof(
        a, s.sort_values("date"), on="date", by="patient_id", allow_exact_matches=False
    )
    a = a.merge(
        result.truth,
        left_on=["patient_id", "session_date"],
        right_on=["patient_id", "episode_start"],
    )
    base = induction_response(c.sessions, c.assessments)["baseline"]
    a = a.merge(base, left_on="patient_id", right_index=True)
    return a.assign(u=(a["date"] - a["episode_start"]).dt.days)


# --- determinism and form ------------------------------------------------------------------
def _frames(r: SimulationResult) -> list[pd.DataFrame]:
    return [r.cohort.patients, r.cohort.sessions, r.cohort.assessments, r.truth]


def test_same_seed_gives_identical_frames_and_other_seeds_differ() -> None:
    a, b, other = simulate(150, 3), simulate(150, 3), simulate(150, 4)
    for x, y in zip(_frames(a), _frames(b), strict=True):
        pd.testing.assert_frame_equal(x, y)
    assert not a.cohort.assessments.equals(other.cohort.assessments)
    assert not a.truth.equals(other.truth)


def test_frames_are_canonical(sim_small: SimulationResult) -> None:
    c = sim_small.cohort
    for table, df in (
        ("patients", c.patients),
        ("sessions", c.sessions),
        ("assessments", c.assessments),
    ):
        assert list(df.columns) == [col.name for col in TABLES[table]]
        pd.testing.assert_frame_equal(df, canonicalize(table, df))
    assert len(c.patients) == 400
    assert c.patients["patient_id"].is_unique
    assert list(sim_small.truth.columns) == list(TRUTH_COLUMNS)


def test_values_respect_the_contract(sim_small: SimulationResult) -> None:
    c = sim_small.cohort
    end = sim_small.end_date
    for table, df in (
        ("patients", c.patients),
        ("sessions", c.sessions),
        ("assessments", c.assessments),
    ):
        for col in TABLES[table]:
            s = df[col.name].dropna()
            if col.allowed is not None:
                assert set(s) <= set(col.allowed), (table, col.name)
            if col.kind in ("int", "float"):
                assert s.between(col.minimum, col.maximum).all(), (table, col.name)
            if col.kind == "int":
                assert (s == np.round(s)).all(), (table, col.name)
            if col.kind == "date":
                assert (s <= end).all(), (table, col.name)
            if not col.nullable:
                assert df[col.name].notna().all(), (table, col.name)
    for df in (c.sessions, c.assessments):
        assert not df.duplicated(["patient_id", "date"]).any()
        assert set(df["patient_id"]) <= set(c.patients["patient_id"])
    items = c.assessments[list(PHQ9_ITEMS)]
    both = items.notna().all(axis=1) & c.assessments["phq9_total"].notna()
    assert both.any()
    assert (items[both].sum(axis=1) == c.assessments.loc[both, "phq9_total"]).all()
    # Every row has a usable PHQ-9: a total, or at most two missing items.
    assert phq9_total(c.assessments).notna().all()


def test_missing_values_are_present_in_each_form(sim_small: SimulationResult) -> None:
    a = sim_small.cohort.assessments
    n_missing = a[list(PHQ9_ITEMS)].isna().sum(axis=1)
    assert ((n_missing >= 1) & (n_missing <= 2)).mean() > 0.02
    assert ((n_missing == 9) & a["phq9_total"].notna()).mean() > 0.03
    assert a["cssrs_ideation"].notna().mean() > 0.2
    assert a["cssrs_ideation"].isna().mean() > 0.2
    s = sim_small.cohort.sessions
    for col in ("dose_mg_per_kg", "route", "psychotherapy", "dissociation", "systolic_bp_max"):
        assert 0 < s[col].isna().mean() < 0.5, col
    for col in ("age", "sex", "diagnosis", "prior_treatments"):
        assert sim_small.cohort.patients[col].notna().mean() > 0.9, col


def test_doses_are_realistic_per_route(sim_small: SimulationResult) -> None:
    s = sim_small.cohort.sessions.dropna(subset=["route", "dose_mg_per_kg"])
    ranges = SimulationParams().dose_range
    for route, (lo, hi) in ranges.items():
        d = s.loc[s["route"] == route, "dose_mg_per_kg"]
        assert len(d) > 0, route
        assert d.between(lo, hi).all(), route


def test_end_date_censors_everything_and_moves_the_window() -> None:
    r = simulate(120, 9, end_date="2024-06-30")
    c = r.cohort
    end = pd.Timestamp("2024-06-30")
    for df in (c.sessions, c.assessments):
        assert df["date"].max() <= end
        assert df["date"].min() >= end - pd.Timedelta(days=760)
    assert r.truth["episode_start"].max() <= end
    # The latent truth is never censored: some wane times reach past the end date.
    reach = r.truth["episode_start"] + pd.to_timedelta(r.truth["latent_wane_days"], unit="D")
    assert (reach > end).any()


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    end=st.dates(min_value=date(2010, 1, 1), max_value=date(2026, 10, 31)),
)
def test_invariants_hold_for_any_size_seed_and_end_date(n: int, seed: int, end: date) -> None:
    r = simulate(n, seed, end_date=pd.Timestamp(end))
    c = r.cohort
    assert len(c.patients) == n
    for df in (c.sessions, c.assessments):
        assert not df.duplicated(["patient_id", "date"]).any()
        assert (df["date"] <= pd.Timestamp(end)).all()
    assert set(c.sessions["patient_id"]) == set(c.patients["patient_id"])
    assert phq9_total(c.assessments).between(0, 27).all()
    assert (r.truth["episode_start"] <= pd.Timestamp(end)).all()
    assert (np.diff(r.truth[RISKS].to_numpy(), axis=1) >= 0).all()


def test_rejects_an_empty_cohort_and_inconsistent_parameters() -> None:
    with pytest.raises(ValueError, match="n_patients"):
        simulate(0, 1)
    with pytest.raises(ValueError, match="completed_probs_responder must give 4"):
        simulate(10, 1, params=SimulationParams(induction_sessions=4))
    with pytest.raises(ValueError, match="depth_frailty_corr"):
        simulate(10, 1, params=SimulationParams(depth_frailty_corr=1.5))


# --- truth ---------------------------------------------------------------------------------
def test_truth_rows_are_the_response_episodes(sim_small: SimulationResult) -> None:
    t = sim_small.truth
    s = sim_small.cohort.sessions
    m = t.merge(
        s, left_on=["patient_id", "episode_start"], right_on=["patient_id", "date"], how="left"
    )
    assert m["kind"].notna().all()
    assert (m.loc[m["episode_index"] == 0, "kind"] == "induction").all()
    assert (m.loc[m["episode_index"] > 0, "kind"] == "maintenance").all()
    # The first episode starts at the patient's last induction session.
    last_ind = s[s["kind"] == "induction"].groupby("patient_id")["date"].max()
    first = t[t["episode_index"] == 0].set_index("patient_id")["episode_start"]
    assert (first == last_ind.loc[first.index]).all()
    # Every maintenance session starts an episode; indices count up per patient.
    assert (s["kind"] == "maintenance").sum() == (t["episode_index"] > 0).sum()
    rank = t.groupby("patient_id").cumcount()
    assert (rank == t["episode_index"]).all()
    assert (t["latent_wane_days"] > 0).all()


def test_truth_risks_are_monotone_and_match_latent_times(sim_small: SimulationResult) -> None:
    t = sim_small.truth
    r = t[RISKS].to_numpy()
    assert ((r >= 0) & (r <= 1)).all()
    assert (np.diff(r, axis=1) > 0).all()
    for h in HORIZONS:
        empirical = (t["latent_wane_days"] <= h).mean()
        assert abs(t[f"risk_{h}d"].mean() - empirical) < 0.05, h
    # Discriminating, not just calibrated in the large: high risks wane more often.
    q = pd.qcut(t["risk_28d"], 4, labels=False)
    share = (t["latent_wane_days"] <= 28).groupby(q).mean()
    assert share.iloc[-1] > share.iloc[0] + 0.2


def test_true_risk_is_the_log_logistic_cdf() -> None:
    loc = np.log(np.array([20.0, 80.0]))
    risk = true_risk(loc, 0.5, horizons=(20, 80))
    # At h = exp(location) the median is reached.
    assert risk[0, 0] == pytest.approx(0.5)
    assert risk[1, 1] == pytest.approx(0.5)
    assert risk[0, 1] > 0.5 > risk[1, 0]


def test_conditional_true_risk_matches_latent_times_after_a_landmark() -> None:
    t = simulate(2000, 17).truth
    scale = SimulationParams().wane_scale
    loc = truth_location(t, scale)
    np.testing.assert_allclose(true_risk(loc, scale), t[RISKS].to_numpy(), rtol=1e-9)
    alive = (t["latent_wane_days"] > 28).to_numpy()
    risk = true_risk(loc[alive], scale, horizons=(28,), since=28.0)[:, 0]
    waned = (t["latent_wane_days"][alive] <= 56).mean()
    assert alive.sum() > 2000
    assert abs(risk.mean() - waned) < 0.03


def test_frailty_links_episodes_of_a_patient() -> None:
    # Past episodes inform later ones: consecutive latent times of a patient are
    # correlated well beyond what the (weak) covariate effects alone give (~0.05).
    t = simulate(1500, 21).truth
    log_t = np.log(t["latent_wane_days"])
    following = log_t.groupby(t["patient_id"]).shift(-1)
    pairs = following.notna()
    assert pairs.sum() > 1000
    assert np.corrcoef(log_t[pairs], following[pairs])[0, 1] > 0.12


def test_deeper_response_goes_with_longer_latent_benefit() -> None:
    # The depth of response is an observable trace of the latent durability:
    # the response-assessment PHQ-9 relative to baseline (from the episode
    # builder, as a model would see it) falls as the latent wane time grows.
    from scipy.stats import spearmanr

    from forecast.episodes import build_episodes

    r = simulate(3000, 31)
    ep = build_episodes(r.cohort)
    first = r.truth[r.truth["episode_index"] == 0]
    m = ep.merge(first, left_on=["patient_id", "start"], right_on=["patient_id", "episode_start"])
    m = m.dropna(subset=["response_phq9", "baseline_phq9"])
    assert len(m) > 500
    depth = m["response_phq9"].astype(float) / m["baseline_phq9"].astype(float)
    rho, pvalue = spearmanr(depth, m["latent_wane_days"])
    assert rho < -0.12
    assert pvalue < 1e-4
    # Without the link (depth_frailty_corr 0) the association is much weaker.
    r0 = simulate(3000, 31, params=SimulationParams(depth_frailty_corr=0.0))
    ep0 = build_episodes(r0.cohort)
    first0 = r0.truth[r0.truth["episode_index"] == 0]
    m0 = ep0.merge(
        first0, left_on=["patient_id", "start"], right_on=["patient_id", "episode_start"]
    ).dropna(subset=["response_phq9", "baseline_phq9"])
    depth0 = m0["response_phq9"].astype(float) / m0["baseline_phq9"].astype(float)
    assert spearmanr(depth0, m0["latent_wane_days"])[0] > rho + 0.05


# --- scores follow the latent truth -----------------------------------------------------------
def test_scores_are_consistent_with_the_latent_wane_time(sim_small: SimulationResult) -> None:
    a = tag_episodes(sim_small)
    before = a[a["u"] < a["latent_wane_days"]]
    after = a[a["u"] >= a["latent_wane_days"] + 7]
    assert len(before) > 200
    assert len(after) > 40
    in_response = before["phq9"] <= 0.5 * before["baseline"]
    assert in_response.mean() > 0.85
    waned = (after["phq9"] >= 10) & (after["phq9"] > 0.5 * after["baseline"])
    assert waned.mean() > 0.85
    # Suicidal ideation re-emerges mostly after waning.
    si_before = (before["phq9_9"] >= 1).mean()
    si_after = (after["phq9_9"] >= 1).mean()
    assert si_before < 0.03
    assert si_after > 5 * si_before


def test_scores_rise_in_the_weeks_before_waning(sim_small: SimulationResult) -> None:
    a = tag_episodes(sim_small)
    to_wane = a["latent_wane_days"] - a["u"]
    late = a.loc[(to_wane > 0) & (to_wane <= 14), "phq9"]
    early = a.loc[(to_wane > 14) & (to_wane <= 28), "phq9"]
    assert len(late) > 30
    assert len(early) > 30
    assert late.mean() > early.mean() + 1.0


# --- calibration to the sources (the done-when) ----------------------------------------
@pytest.fixture(scope="module")
def done_when_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim2000") / "cohort"
    res = CliRunner().invoke(
        main, ["simulate", "--patients", "2000", "--seed", "5", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_done_when_simulated_folder_validates(done_when_folder: Path) -> None:
    res = CliRunner().invoke(main, ["validate", str(done_when_folder)])
    assert res.exit_code == 0, res.output


def _read_raw(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    p = pd.read_csv(folder / "patients.csv", dtype={"patient_id": str})
    s = pd.read_csv(folder / "sessions.csv", dtype={"patient_id": str}, parse_dates=["date"])
    a = pd.read_csv(folder / "assessments.csv", dtype={"patient_id": str}, parse_dates=["date"])
    return p, s, a, read_truth(folder / "truth.csv")


@pytest.mark.slow
def test_reproduces_orka_response_and_durability(done_when_folder: Path) -> None:
    _, s, a, t = _read_raw(done_when_folder)
    resp = induction_response(s, a)
    assert len(resp) > 1500
    assert 0.45 <= resp["response"].mean() <= 0.65
    first = t[t["episode_index"] == 0]
    assert len(first) > 800
    assert 0.72 <= (first["latent_wane_days"] > 28).mean() <= 0.88
    assert 0.52 <= (first["latent_wane_days"] > 56).mean() <= 0.68
    assert abs(first["risk_28d"].mean() - (first["latent_wane_days"] <= 28).mean()) < 0.03
    # The figures the CLI prints are the ones measured here independently.
    figures = summarize(simulate(2000, 5))
    assert figures["induction_response"] == pytest.approx(resp["response"].mean())
    assert figures["measured_patients"] == len(resp)
    assert figures["benefit_56d"] == pytest.approx((first["latent_wane_days"] > 56).mean())


@pytest.mark.slow
def test_reproduces_induction_dropout(done_when_folder: Path) -> None:
    _, s, _, _ = _read_raw(done_when_folder)
    ind = s[s["kind"] == "induction"].groupby("patient_id")["date"].agg(["min", "count"])
    # Only patients whose induction could have finished before the end date.
    ind = ind[ind["min"] <= pd.Timestamp("2026-10-31") - pd.Timedelta(days=30)]
    assert len(ind) > 1800
    assert 0.40 <= (ind["count"] < 6).mean() <= 0.60
    assert 0.14 <= (ind["count"] == 1).mean() <= 0.26
    assert ind["count"].max() == 6


@pytest.mark.slow
def test_covariate_effects_have_the_intended_direction(done_when_folder: Path) -> None:
    p, s, _, t = _read_raw(done_when_folder)
    m = t.merge(s, left_on=["patient_id", "episode_start"], right_on=["patient_id", "date"]).merge(
        p, on="patient_id"
    )
    latent = m["latent_wane_days"]
    therapy = m["psychotherapy"].astype("boolean")
    assert latent[therapy == True].median() > 1.15 * latent[therapy == False].median()  # noqa: E712
    few, many = m["prior_treatments"] <= 1, m["prior_treatments"] >= 6
    assert latent[few].median() > 1.15 * latent[many].median()
    # Diagnosis groups are small: compare the true risks (no episode-level noise).
    # Treatment-resistant depression wanes sooner than other major depression.
    mdd, trd = m["diagnosis"] == "mdd", m["diagnosis"] == "trd"
    assert m.loc[trd, "risk_28d"].mean() > m.loc[mdd, "risk_28d"].mean() + 0.03


def test_cli_writes_the_four_files(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    res = CliRunner().invoke(
        main,
        [
            "simulate",
            "--patients",
            "50",
            "--seed",
            "8",
            "--out",
            str(out),
            "--end-date",
            "2025-12-31",
        ],
    )
    assert res.exit_code == 0, res.output
    # Progress and figures go to stderr; stdout stays clean for pipes.
    assert res.stdout == ""
    assert "induction response" in res.stderr
    for name in ("patients", "sessions", "assessments", "truth"):
        assert (out / f"{name}.csv").is_file(), name
    p, s, a, t = _read_raw(out)
    direct = simulate(50, 8, end_date="2025-12-31")
    assert len(p) == 50
    assert len(s) == len(direct.cohort.sessions)
    assert len(a) == len(direct.cohort.assessments)
    assert s["date"].max() <= pd.Timestamp("2025-12-31")
    pd.testing.assert_series_equal(
        t["latent_wane_days"], direct.truth["latent_wane_days"].round(2), check_names=False
    )


def test_written_files_use_the_contract_text_format(sim_small_folder: Path) -> None:
    for table in ("patients", "sessions", "assessments"):
        raw = pd.read_csv(sim_small_folder / f"{table}.csv", dtype=str, keep_default_na=False)
        assert list(raw.columns) == [c.name for c in TABLES[table]]
        for col in TABLES[table]:
            if col.kind == "int":
                assert raw[col.name].str.fullmatch(r"\d*").all(), col.name
            elif col.kind == "bool":
                assert set(raw[col.name]) <= {"true", "false", ""}, col.name
            elif col.kind == "date":
                assert raw[col.name].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all(), col.name


def test_written_folder_loads_back_to_the_same_cohort(
    sim_small_folder: Path, sim_small: SimulationResult
) -> None:
    loaded = load_cohort(sim_small_folder)
    pd.testing.assert_frame_equal(loaded.patients, sim_small.cohort.patients)
    pd.testing.assert_frame_equal(loaded.sessions, sim_small.cohort.sessions)
    pd.testing.assert_frame_equal(loaded.assessments, sim_small.cohort.assessments)


def test_cli_rejects_a_bad_end_date(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main,
        ["simulate", "--patients", "5", "--seed", "1", "--out", str(tmp_path), "--end-date", "x"],
    )
    assert res.exit_code == 2
    assert "--end-date" in res.output


def test_write_simulation_round_trips_truth(tmp_path: Path, sim_small: SimulationResult) -> None:
    out = write_simulation(sim_small, tmp_path / "w")
    t = read_truth(out / "truth.csv")
    assert list(t.columns) == list(TRUTH_COLUMNS)
    assert len(t) == len(sim_small.truth)
    np.testing.assert_allclose(t[RISKS], sim_small.truth[RISKS], atol=1e-6)


def test_depth_oracle_matches_numerical_integration() -> None:
    """The depth oracle's quadrature against scipy's adaptive integral over the frailty.

    P(T <= s + h | T > s, depth) = E[F(s+h|f) - F(s|f)] / E[1 - F(s|f)] with f
    normal given the depth and weighted by the response odds expit(r + c f).
    """
    from scipy.integrate import quad
    from scipy.special import expit
    from scipy.stats import norm

    from forecast.simulation import depth_oracle_risk

    res = simulate(400, 11)
    p = res.params
    truth = res.truth.merge(res.latent, on="patient_id").iloc[:6]
    loc = truth_location(truth, p.wane_scale)
    since = np.array([0.0, 5.0, 12.0, 30.0, 60.0, 3.0])
    got = depth_oracle_risk(loc, truth["frailty"], truth["depth"],
                            truth["response_logit_rest"], p, (7, 28, 84), since)
    sd, rho = p.frailty_sd, p.depth_frailty_corr
    for i in range(len(truth)):
        loc0 = loc[i] - truth["frailty"].iloc[i]
        mu, s_f = sd * rho * truth["depth"].iloc[i], sd * np.sqrt(1 - rho**2)
        r = truth["response_logit_rest"].iloc[i]

        def cdf(t: float, f: float, loc0: float = loc0) -> float:
            return 0.0 if t <= 0 else float(expit((np.log(t) - loc0 - f) / p.wane_scale))

        def weight(f: float, mu: float = mu, s_f: float = s_f, r: float = r) -> float:
            return norm.pdf(f, mu, s_f) * expit(r + p.response_frailty * f)

        lim = (mu - 10 * s_f, mu + 10 * s_f)
        den = quad(lambda f, i=i: (1 - cdf(since[i], f)) * weight(f), *lim)[0]
        for j, h in enumerate((7, 28, 84)):
            num = quad(lambda f, i=i, h=h: (cdf(since[i] + h, f) - cdf(since[i], f))
                       * weight(f), *lim)[0]
            assert got[i, j] == pytest.approx(num / den, abs=1e-8)
    # a frailty known exactly (SD -> 0 via rho = 1 and depth = frailty / sd) is the oracle
    exact = depth_oracle_risk(loc, truth["frailty"], truth["frailty"] / sd,
                              truth["response_logit_rest"],
                              dataclasses.replace(p, depth_frailty_corr=1.0), (7, 28, 84), since)
    assert np.allclose(exact, true_risk(loc, p.wane_scale, (7, 28, 84), since), atol=1e-12)


# --- clinic workflows: assessment schedules and totals-only clinics (issue 20 item 2) ---
def _event_threshold(baseline: float) -> float:
    """PHQ-9 at or above which an episode has waned (>= 10 and above half the baseline)."""
    return max(10.0, np.floor(baseline / 2.0) + 1.0)


def test_default_schedule_reproduces_the_cohorts_from_before_the_options() -> None:
    """The default (weekly, no totals-only clinics) gives the frames it gave before the
    options existed: the figure printed by the simulator before them, and identical
    frames whether the defaults are given or not."""
    assert simulate(50, 7).cohort.assessments.sum(numeric_only=True).sum() == 5580.0
    a, b = simulate(300, 3), simulate(300, 3, schedule="weekly", totals_only_share=0.0)
    for t in TABLES:
        pd.testing.assert_frame_equal(getattr(a.cohort, t), getattr(b.cohort, t))
    pd.testing.assert_frame_equal(a.truth, b.truth)


def test_truth_and_sessions_do_not_depend_on_the_schedule_or_the_totals_only_share() -> None:
    """Same seed, same latent cohort: identical truth and sessions under every schedule;
    only the recorded assessments (and the blanked optional fields) change."""
    base = simulate(1500, 21)
    for schedule in ("weekly", "at-visit", "sparse", "every-3-days"):
        for share in (0.0, 0.4):
            r = simulate(1500, 21, schedule=schedule, totals_only_share=share)
            pd.testing.assert_frame_equal(r.truth, base.truth)
            cols = ["patient_id", "date", "kind"]
            pd.testing.assert_frame_equal(r.cohort.sessions[cols], base.cohort.sessions[cols])
            pd.testing.assert_frame_equal(r.cohort.patients, base.cohort.patients)
            pd.testing.assert_frame_equal(r.latent.drop(columns="totals_only"),
                                          base.latent.drop(columns="totals_only"))
            assert (r.schedule, r.totals_only_share) == (schedule, share)
    assert not simulate(1500, 21, schedule="sparse").cohort.assessments.equals(
        base.cohort.assessments)


def test_at_visit_schedule_scores_each_session_at_check_in() -> None:
    """A PHQ-9 on the day of or the day before nearly every session after the first,
    taken before the session: after the latent waning of the episode the session
    ends, the check-in shows it; between visits only sparse scores, away from sessions."""
    r = simulate(1500, 8, schedule="at-visit")
    s, a = r.cohort.sessions, r.cohort.assessments
    a = a.assign(total=phq9_total(a))
    first = s.groupby("patient_id")["date"].transform("min")
    later = s[s["date"] > first]
    a_keys = set(zip(a["patient_id"], a["date"], strict=True))
    checked = [(p, d) in a_keys or (p, d - pd.Timedelta(days=1)) in a_keys
               for p, d in zip(later["patient_id"], later["date"], strict=True)]
    assert 0.9 <= np.mean(checked) <= 1.0
    # every assessment that is neither a baseline nor a check-in is >= 7 days from a session
    s_days = s.groupby("patient_id")["date"].apply(lambda x: x.to_numpy())
    gaps = []
    for p, d in zip(a["patient_id"], a["date"], strict=True):
        diff = (s_days[p] - np.datetime64(d)) / np.timedelta64(1, "D")
        if (diff >= 0).any() and diff.min() >= 0 and (diff < 0).sum() == 0:
            continue  # baseline (before the first session)
        gaps.append(np.min(np.abs(diff)))
    gaps = np.asarray(gaps)
    assert set(np.unique(gaps[gaps < 7])) <= {0.0, 1.0}
    assert (gaps >= 7).mean() > 0.1  # scores between visits exist
    # check-ins of maintenance sessions that end a waned episode show the relapse
    t = r.truth.sort_values(["patient_id", "episode_start"])
    t["next"] = t.groupby("patient_id")["episode_start"].shift(-1)
    t = t.dropna(subset=["next"])
    waned = t[(t["next"] - t["episode_start"]).dt.days > t["latent_wane_days"] + 8]
    base = a.sort_values("date").groupby("patient_id")["total"].first()
    on_day = a.set_index(["patient_id", "date"])["total"]
    hits = []
    for p, d in zip(waned["patient_id"], waned["next"], strict=True):
        for day in (d, d - pd.Timedelta(days=1)):
            if (p, day) in on_day.index and np.isfinite(on_day.loc[(p, day)]):
                hits.append(on_day.loc[(p, day)] >= _event_threshold(base[p]))
                break
    assert len(hits) > 50
    assert np.mean(hits) > 0.8


def test_sparse_schedule_scores_every_four_to_eight_weeks() -> None:
    r = simulate(1500, 9, schedule="sparse")
    a = r.cohort.assessments.sort_values(["patient_id", "date"])
    gap = a.groupby("patient_id")["date"].diff().dt.days.dropna()
    weekly = simulate(1500, 9).cohort.assessments.sort_values(["patient_id", "date"])
    w_gap = weekly.groupby("patient_id")["date"].diff().dt.days.dropna()
    assert np.median(w_gap) <= 10
    assert 28 <= np.median(gap) <= 70
    assert len(a) < 0.5 * len(weekly)


def test_every_3_days_schedule_scores_on_a_three_day_rhythm() -> None:
    """After the baseline every gap is a multiple of 3 days (a skipped score doubles
    it), mostly exactly 3, and no score falls on a session day."""
    r = simulate(1500, 9, schedule="every-3-days")
    a = r.cohort.assessments.sort_values(["patient_id", "date"])
    d = a.groupby("patient_id")["date"].diff().dt.days
    gap = d[a.groupby("patient_id").cumcount() >= 2].to_numpy()  # after the baseline
    assert set(np.unique(gap % 3)) == {0}
    assert 0.6 < np.mean(gap == 3) < 0.98
    days = set(zip(r.cohort.sessions["patient_id"], r.cohort.sessions["date"], strict=True))
    assert not any(k in days for k in zip(a["patient_id"], a["date"], strict=True))


def test_totals_only_clinics_record_only_phq9_totals() -> None:
    """Flagged patients: a total on every row, no item, no C-SSRS, no optional session
    field; the share is the requested one; the other patients' rows are unchanged."""
    full = simulate(2000, 12)
    r = simulate(2000, 12, totals_only_share=0.3)
    flag = r.latent.set_index("patient_id")["totals_only"]
    assert flag.mean() == pytest.approx(0.3, abs=0.04)
    tot_ids = set(flag.index[flag])
    a, s = r.cohort.assessments, r.cohort.sessions
    mine = a["patient_id"].isin(tot_ids)
    assert a.loc[mine, list(PHQ9_ITEMS)].isna().all().all()
    assert a.loc[mine, ["cssrs_ideation", "cssrs_behavior"]].isna().all().all()
    assert a.loc[mine, "phq9_total"].notna().all()
    # the totals are those the full record gives (items prorated as downstream)
    fa = full.cohort.assessments
    f_tot = phq9_total(fa[fa["patient_id"].isin(tot_ids)]).to_numpy()
    got = a.loc[mine, "phq9_total"].to_numpy()
    known = np.isfinite(f_tot)
    assert np.mean(np.abs(got[known] - f_tot[known]) <= 1) > 0.97
    s_mine = s["patient_id"].isin(tot_ids)
    optional = ["dose_mg_per_kg", "route", "psychotherapy", "dissociation", "systolic_bp_max"]
    assert s.loc[s_mine, optional].isna().all().all()
    pd.testing.assert_frame_equal(a[~mine].reset_index(drop=True),
                                  fa[~fa["patient_id"].isin(tot_ids)].reset_index(drop=True))
    fs = full.cohort.sessions
    pd.testing.assert_frame_equal(s[~s_mine].reset_index(drop=True),
                                  fs[~fs["patient_id"].isin(tot_ids)].reset_index(drop=True))


def test_cli_schedule_and_totals_only_share(tmp_path: Path) -> None:
    runner = CliRunner()
    outs = {}
    for schedule in ("weekly", "sparse"):
        out = tmp_path / schedule
        res = runner.invoke(main, ["simulate", "--patients", "200", "--seed", "4", "--out",
                                   str(out), "--schedule", schedule,
                                   "--totals-only-share", "0.25"])
        assert res.exit_code == 0, res.output
        assert runner.invoke(main, ["validate", str(out)]).exit_code == 0
        outs[schedule] = out
    truth = {k: (v / "truth.csv").read_bytes() for k, v in outs.items()}
    assert truth["weekly"] == truth["sparse"]
    bad = runner.invoke(main, ["simulate", "--patients", "5", "--seed", "1", "--out",
                               str(tmp_path / "x"), "--schedule", "daily"])
    assert bad.exit_code != 0
    with pytest.raises(ValueError, match="schedule"):
        simulate(5, 1, schedule="daily")
    with pytest.raises(ValueError, match="totals_only_share"):
        simulate(5, 1, totals_only_share=1.5)
