"""Synthetic KAP cohorts with a known truth, for tests, demos and benchmarks.

The simulator writes the three contract tables (patients, sessions,
assessments) of a clinic population plus ``truth.csv``: for every response
episode the latent number of days until the benefit wanes and the true risk at
the forecast horizons. Models trained on the contract tables can therefore be
checked against the mechanism that produced them.

Mechanism (all figures are defaults of :class:`SimulationParams`; sources on
the docs' simulator page, docs/simulator.md):

- patients with age, sex, diagnosis, prior failed treatments and a baseline
  PHQ-9 severity; a clinic route/dose, a KAP (psychotherapy) propensity, a
  maintenance policy (fixed interval every 3-5 weeks, brought forward after
  half of the relapses seen before it, or a booster after an observed relapse)
  and a per-patient lognormal frailty shared by all episodes; every booster
  restores the benefit (a simplification);
- the frailty is correlated (0.6) with a depth factor that sets the
  responder's end-of-induction PHQ-9 ratio to baseline, and so the in-benefit
  level of every episode: deeper response, longer benefit (SUSTAIN-1:
  remitters relapse less than responders; early and deep response predicts
  durability), which leaves an observable trace of the durability;
- an induction of up to six sessions every 2-4 days (Murrough et al. 2013);
  about half do not complete it and about 20 % stop after the first (Osmind
  ORKA-2); drop-out is informative (more likely in non-responders);
- induction response about 54 % (ORKA-1, McInnes et al. 2022), from a logistic
  model of baseline severity, prior treatments, diagnosis, KAP and frailty;
- the time until the benefit wanes after each episode start is log-logistic
  AFT with covariates (psychotherapy, dose, route, prior treatments, baseline
  severity, diagnosis, age, episode kind) and the frailty, calibrated so that
  about 80 % / 60 % of first episodes keep the benefit at 28 / 56 days
  (ORKA-1 Kaplan-Meier among responders);
- PHQ-9 scores stay in response before the latent wane time, drift up over the
  three weeks before it and climb above 10 and half the baseline within a week
  after it; item 9 and the C-SSRS screener track severity and re-emerge
  (mostly) only after waning;
- weekly-ish assessments with jitter and skips, item-level answers with some
  missing items and some total-only rows, blank optional session values,
  drop-out during maintenance and administrative censoring at ``end_date``.

Everything is vectorised over patients; the only Python loop runs over
maintenance episodes (a few dozen iterations at most).

The package: :mod:`~forecast.simulation.params` (parameters, result),
:mod:`~forecast.simulation.mechanism` (patients, sessions, wane times, true
risks), :mod:`~forecast.simulation.generator` (:func:`simulate` and its steps)
and :mod:`~forecast.simulation.output` (files and :func:`summarize`).
"""

from __future__ import annotations

from forecast.simulation.generator import simulate
from forecast.simulation.mechanism import depth_oracle_risk, true_risk, truth_location
from forecast.simulation.output import read_truth, summarize, write_simulation, write_truth
from forecast.simulation.params import TRUTH_COLUMNS, SimulationParams, SimulationResult

__all__ = [
    "SimulationParams",
    "SimulationResult",
    "TRUTH_COLUMNS",
    "depth_oracle_risk",
    "read_truth",
    "simulate",
    "summarize",
    "true_risk",
    "truth_location",
    "write_simulation",
    "write_truth",
]
