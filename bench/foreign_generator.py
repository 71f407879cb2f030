"""An independent ("foreign") cohort generator that follows the data contract.

Written separately from ``forecast/simulation.py`` (nothing imported or copied
from it) to check that the pipeline does not assume our simulator's mechanism.

Mechanism
---------
* Three clinics: clinic 0 assesses fortnightly with PHQ-9 items + C-SSRS;
  clinic 1 fortnightly with PHQ-9 totals only and no C-SSRS; clinic 2 monthly
  (every 28 days) with PHQ-9 items, no C-SSRS, plus a check 7 days after each
  session.
* Induction: four sessions on days 0, 3, 7, 10; baseline assessment 2 days
  before. A patient responds with a logistic probability (baseline severity,
  prior treatments). Non-responders stay above half their baseline.
* Every session of a responder restarts a benefit clock whose duration is
  Weibull (shape 1.4) with log-scale = b0 + age, sex, diagnosis, prior
  treatments, baseline severity, session dose, psychotherapy, route and
  session-number effects + an unobserved patient frailty ``z``. The frailty is
  weakly visible through the depth of response (deeper response <-> longer).
* Maintenance boosters: half the patients on a fixed interval of 21-42 days,
  half only as needed; everyone gets a booster 3-7 days after an assessment
  that shows the benefit has waned, if that comes first; follow-up ends at
  drop-out or the administrative end date.
* PHQ-9: while the benefit lasts <= 50 % of baseline (item 9 = 0, C-SSRS
  ideation <= 1); after waning >= 10 and above half baseline (item 9 may
  become 1, C-SSRS ideation 2-3).

Truth (``foreign_truth.csv``; not ``truth.csv``, which ``forecast evaluate``
reads as ``forecast simulate``'s truth format): one row per session of a
responder with ``patient_id``, ``start`` (session date), ``T`` (latent
benefit duration in days), ``log_scale`` and ``shape``, so that the oracle
risk at any date is
``P(T <= t + h | T > t)`` with the Weibull parameters; also the patient's
frailty ``z`` and response depth ``depth`` (``depth = 0.30 - 0.25 z + N(0,
0.06)``, clipped to [0.05, 0.48]), from which ``foreign_check`` builds an
oracle that sees the depth instead of z.

Usage: ``python bench/foreign_generator.py --patients 1000 --seed 1 --end 2026-06-30 --out DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SHAPE = 1.4
DIAG = np.array(["trd", "mdd", "bipolar", "ptsd", "ocd", "other"])
DIAG_P = np.array([0.45, 0.25, 0.1, 0.1, 0.05, 0.05])
DIAG_EFFECT = np.array([0.0, 0.15, -0.2, -0.25, -0.1, 0.0])
ROUTES = np.array(["iv", "im", "intranasal"])
ROUTE_EFFECT = np.array([0.0, 0.05, -0.2])
INDUCTION_DAYS = np.array([0, 3, 7, 10])
#: Frailty z ~ N(0, FRAILTY_SD^2) on the log-scale;
#: depth = DEPTH_MEAN + DEPTH_SLOPE z + N(0, DEPTH_SD^2).
FRAILTY_SD = 0.3
DEPTH_MEAN, DEPTH_SLOPE, DEPTH_SD = 0.30, -0.25, 0.06


def weibull_cdf(t: np.ndarray, log_scale: np.ndarray, shape: float = SHAPE) -> np.ndarray:
    """Weibull CDF with scale ``exp(log_scale)``."""
    t = np.maximum(np.asarray(t, dtype=float), 0.0)
    return 1.0 - np.exp(-((t / np.exp(log_scale)) ** shape))


def conditional_risk(
    t: np.ndarray, h: float, log_scale: np.ndarray, shape: float = SHAPE
) -> np.ndarray:
    """Oracle ``P(T <= t + h | T > t)``."""
    s_t = 1.0 - weibull_cdf(t, log_scale, shape)
    s_th = 1.0 - weibull_cdf(np.asarray(t, dtype=float) + h, log_scale, shape)
    return 1.0 - s_th / np.maximum(s_t, 1e-300)


def depth_oracle_risk(
    t_seen: np.ndarray, t_until: np.ndarray, log_scale_no_z: np.ndarray, depth: np.ndarray,
    shape: float = SHAPE, nodes: int = 40,
) -> np.ndarray:
    """``P(T <= t_until | T > t_seen, depth)``: the oracle with the depth in place of z.

    z given the depth is normal (``z`` and the depth are jointly normal; the
    clipping of the depth is ignored), and the survival to ``t_seen`` updates
    it further: integrated by Gauss-Hermite quadrature. It knows the true
    depth, which the data show only through noisy PHQ-9 ratios, so it is an
    upper bound for a model that reads the depth from the scores.
    """
    var_d = DEPTH_SLOPE**2 * FRAILTY_SD**2 + DEPTH_SD**2
    cov = DEPTH_SLOPE * FRAILTY_SD**2
    mu = cov / var_d * (np.asarray(depth, dtype=float) - DEPTH_MEAN)
    sd = np.sqrt(FRAILTY_SD**2 - cov**2 / var_d)
    x, w = np.polynomial.hermite.hermgauss(nodes)
    zk = mu[:, None] + np.sqrt(2.0) * sd * x[None, :]
    scale = np.exp(np.asarray(log_scale_no_z, dtype=float)[:, None] + zk)
    s_seen = np.exp(-((np.maximum(t_seen, 0.0)[:, None] / scale) ** shape))
    s_until = np.exp(-((np.maximum(t_until, 0.0)[:, None] / scale) ** shape))
    num = (s_seen - s_until) @ w
    den = s_seen @ w
    return num / np.maximum(den, 1e-300)


def _items(rng: np.random.Generator, total: np.ndarray, item9: np.ndarray) -> np.ndarray:
    """Spread ``total - item9`` over items 1-8 (each 0-3) at random; item 9 given."""
    n = len(total)
    rest = (total - item9).astype(int)
    base, rem = rest // 8, rest % 8
    order = np.argsort(rng.random((n, 8)), axis=1)
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(8)[None, :]
    items = base[:, None] + (rank < rem[:, None])
    return np.column_stack([items, item9]).astype(int)


def generate(n: int, seed: int, end: str | pd.Timestamp = "2026-06-30") -> dict[str, pd.DataFrame]:
    """Simulate ``n`` patients; return patients, sessions, assessments and truth frames."""
    rng = np.random.default_rng(seed)
    end_day = 0  # days are relative to the end date; all negative
    ids = np.array([f"F{seed}-{i:06d}" for i in range(n)])
    age = np.clip(rng.normal(44, 13, n), 18, 85).round()
    sex = rng.choice(np.array(["female", "male", "other"]), n, p=[0.55, 0.43, 0.02])
    dcode = rng.choice(len(DIAG), n, p=DIAG_P)
    prior = np.minimum(rng.poisson(2.5, n), 10)
    clinic = rng.choice(3, n, p=[0.4, 0.35, 0.25])
    route = rng.choice(len(ROUTES), n, p=[0.6, 0.2, 0.2])
    dose0 = np.round(rng.uniform(0.4, 1.0, n), 2)
    psy_p = rng.uniform(0.0, 1.0, n)
    # fixed booster interval; 10**6 = boosters only after an observed relapse (as needed)
    interval = rng.choice(np.array([21, 28, 35, 42, 10**6]), n, p=[0.1, 0.15, 0.15, 0.1, 0.5])
    period = np.where(clinic == 2, 28, 14)
    start = -rng.integers(150, 800, n)  # first induction day (relative to end)
    stop = np.minimum(start + rng.exponential(500, n).astype(int) + 60, end_day)
    baseline = rng.integers(12, 28, n)
    z = rng.normal(0.0, FRAILTY_SD, n)  # unobserved frailty (log-scale)
    depth = np.clip(DEPTH_MEAN + DEPTH_SLOPE * z + rng.normal(0, DEPTH_SD, n), 0.05, 0.48)
    p_resp = 1 / (1 + np.exp(-(1.6 - 0.12 * (prior - 2.5) - 0.06 * (baseline - 19))))
    responder = rng.random(n) < p_resp
    female = sex == "female"
    lp_patient = (
        3.55
        + 0.012 * (age - 44)
        + 0.15 * female
        + DIAG_EFFECT[dcode]
        - 0.07 * (prior - 2.5)
        - 0.03 * (baseline - 19)
        + ROUTE_EFFECT[route]
        + z
    )

    # --- sessions: induction, then boosters; benefit clocks for responders
    s_pid, s_day, s_kind, s_dose, s_psy = [], [], [], [], []
    t_pid, t_day, t_T, t_lp = [], [], [], []

    def add_session(rows: np.ndarray, day: np.ndarray, kind: str) -> np.ndarray:
        dose = np.round(np.clip(dose0[rows] + rng.normal(0, 0.05, len(rows)), 0.3, 1.2), 2)
        psy = rng.random(len(rows)) < psy_p[rows]
        s_pid.append(rows)
        s_day.append(day)
        s_kind.append(np.full(len(rows), kind))
        s_dose.append(dose)
        s_psy.append(psy)
        return 0.4 * (dose - 0.7) + 0.25 * psy

    for d in INDUCTION_DAYS:
        eff = add_session(np.arange(n), start + d, "induction")
    # The clock of the responders starts at the last induction session.
    rows = np.flatnonzero(responder)
    cur = start[rows] + INDUCTION_DAYS[-1]
    eff = eff[rows]
    k = 0
    while len(rows):
        lp = lp_patient[rows] + eff + 0.06 * min(k, 5)
        T = np.exp(lp) * rng.weibull(SHAPE, len(rows))
        t_pid.append(rows)
        t_day.append(cur)
        t_T.append(T)
        t_lp.append(lp)
        wane = cur + T
        base = start[rows] - 2
        per = period[rows]
        # first scheduled assessment strictly after the wane time (monthly clinics also check at +7)
        grid = base + per * (np.floor((wane - base) / per) + 1)
        check = np.where((clinic[rows] == 2) & (wane < cur + 7), cur + 7, np.inf)
        detect = np.minimum(grid, check)
        nxt = np.where(
            detect < cur + interval[rows],
            detect + rng.integers(3, 8, len(rows)),
            cur + interval[rows],
        ).astype(int)
        # keep sessions off the assessment grid (an assessment is never on a session day)
        nxt = nxt + ((nxt - base) % per == 0)
        nxt = nxt + ((clinic[rows] == 2) & ((nxt - base) % per == 7))
        keep = nxt <= stop[rows] - 1
        rows, nxt = rows[keep], nxt[keep]
        if not len(rows):
            break
        eff = add_session(rows, nxt, "maintenance")
        cur = nxt
        k += 1

    ses = pd.DataFrame(
        {
            "pc": np.concatenate(s_pid),
            "day": np.concatenate(s_day),
            "kind": np.concatenate(s_kind),
            "dose_mg_per_kg": np.concatenate(s_dose),
            "psychotherapy": np.concatenate(s_psy),
        }
    ).sort_values(["pc", "day"], kind="stable")
    truth = pd.DataFrame(
        {
            "pc": np.concatenate(t_pid),
            "day": np.concatenate(t_day),
            "T": np.concatenate(t_T),
            "log_scale": np.concatenate(t_lp),
        }
    ).sort_values(["pc", "day"], kind="stable")

    # --- assessments: the clinic grid (+ monthly clinics' check 7 days after each session)
    n_grid = ((stop - (start - 2)) // period + 1).astype(int)
    a_pc = np.repeat(np.arange(n), n_grid)
    a_day = (start - 2)[a_pc] + period[a_pc] * (
        np.arange(len(a_pc)) - np.repeat(np.cumsum(n_grid) - n_grid, n_grid)
    )
    last_induction = (ses["kind"].to_numpy() == "maintenance") | (
        ses["day"].to_numpy() == start[ses["pc"].to_numpy()] + INDUCTION_DAYS[-1]
    )
    m = (clinic[ses["pc"].to_numpy()] == 2) & last_induction
    extra_pc = ses["pc"].to_numpy()[m]
    extra_day = ses["day"].to_numpy()[m] + 7
    ok = extra_day <= stop[extra_pc]
    ass = pd.DataFrame(
        {"pc": np.concatenate([a_pc, extra_pc[ok]]), "day": np.concatenate([a_day, extra_day[ok]])}
    )
    ass = ass.drop_duplicates().sort_values(["pc", "day"], kind="stable").reset_index(drop=True)
    ass = ass[ass["day"] <= end_day].reset_index(drop=True)

    # state of each assessment: the latest clock started strictly before it
    pc, day = ass["pc"].to_numpy(), ass["day"].to_numpy()
    key_t = truth["pc"].to_numpy() * 10**6 + (truth["day"].to_numpy() + 10**5)
    key_a = pc * 10**6 + (day + 10**5)
    j = np.searchsorted(key_t, key_a, side="left") - 1
    has = (j >= 0) & (truth["pc"].to_numpy()[np.maximum(j, 0)] == pc)
    t_since = day - truth["day"].to_numpy()[np.maximum(j, 0)]
    in_benefit = has & (t_since < truth["T"].to_numpy()[np.maximum(j, 0)])
    after = day > start[pc]
    b = baseline[pc].astype(float)
    na = len(ass)
    resp_score = np.floor(np.clip(b * (depth[pc] + rng.normal(0, 0.05, na)), 0, np.floor(b / 2)))
    low = np.maximum(10, np.floor(b / 2) + 1)
    waned_score = np.clip(np.round(b * rng.uniform(0.7, 1.05, na)), low, 27)
    nonresp = np.clip(np.round(b * rng.uniform(0.6, 1.0, na)), np.floor(b / 2) + 1, 27)
    total = np.where(
        ~after, b, np.where(in_benefit, resp_score, np.where(has, waned_score, nonresp))
    )
    total = total.astype(int)
    # item 9: 0 while in benefit; may be 1 otherwise (only where the total allows it)
    item9 = np.where(in_benefit & after, 0, (rng.random(na) < 0.25).astype(int))
    item9 = np.minimum(np.maximum(item9, total - 24), total)
    items = _items(rng, total, item9)
    cs = np.where(
        in_benefit & after,
        rng.choice(2, na, p=[0.92, 0.08]),
        rng.choice(4, na, p=[0.4, 0.3, 0.2, 0.1]),
    )
    cs = np.where(item9 > 0, np.maximum(cs, 1), cs)
    ccl = clinic[pc]
    dates = pd.Timestamp(end).normalize() + pd.to_timedelta(day, unit="D")
    assessments = pd.DataFrame({"patient_id": ids[pc], "date": dates.strftime("%Y-%m-%d")})
    item_rows = ccl != 1
    for i in range(9):
        assessments[f"phq9_{i + 1}"] = pd.array(np.where(item_rows, items[:, i], -1), dtype="Int64")
        assessments.loc[~item_rows, f"phq9_{i + 1}"] = pd.NA
    assessments["phq9_total"] = pd.array(np.where(item_rows, -1, total), dtype="Int64")
    assessments.loc[item_rows, "phq9_total"] = pd.NA
    assessments["cssrs_ideation"] = pd.array(np.where(ccl == 0, cs, -1), dtype="Int64")
    assessments.loc[ccl != 0, "cssrs_ideation"] = pd.NA
    assessments["cssrs_behavior"] = pd.array(np.zeros(na, dtype=int), dtype="Int64")
    assessments.loc[ccl != 0, "cssrs_behavior"] = pd.NA

    spc = ses["pc"].to_numpy()
    sessions = pd.DataFrame(
        {
            "patient_id": ids[spc],
            "date": (
                pd.Timestamp(end).normalize() + pd.to_timedelta(ses["day"].to_numpy(), unit="D")
            ).strftime("%Y-%m-%d"),
            "kind": ses["kind"].to_numpy(),
            "dose_mg_per_kg": ses["dose_mg_per_kg"].to_numpy(),
            "route": ROUTES[route[spc]],
            "psychotherapy": np.where(ses["psychotherapy"].to_numpy(), "true", "false"),
        }
    )
    patients = pd.DataFrame(
        {
            "patient_id": ids,
            "age": age.astype(int),
            "sex": sex,
            "diagnosis": DIAG[dcode],
            "prior_treatments": prior.astype(int),
        }
    )
    tpc = truth["pc"].to_numpy()
    truth_df = pd.DataFrame(
        {
            "patient_id": ids[tpc],
            "start": (
                pd.Timestamp(end).normalize() + pd.to_timedelta(truth["day"].to_numpy(), unit="D")
            ).strftime("%Y-%m-%d"),
            "T": truth["T"].to_numpy(),
            "log_scale": truth["log_scale"].to_numpy(),
            "shape": SHAPE,
            "clinic": clinic[tpc],
            # the patient's frailty and response depth, for the "observable oracle"
            "z": z[tpc],
            "depth": depth[tpc],
        }
    )
    return {
        "patients": patients,
        "sessions": sessions,
        "assessments": assessments,
        "truth": truth_df,
    }


def write(frames: dict[str, pd.DataFrame], out: Path | str) -> Path:
    """Write the contract files (CSV) and foreign_truth.csv into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        # the truth is NOT named truth.csv: that name belongs to forecast simulate's format
        fname = "foreign_truth" if name == "truth" else name
        df.to_csv(out / f"{fname}.csv", index=False, lineterminator="\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--end", default="2026-06-30")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    write(generate(a.patients, a.seed, a.end), a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
