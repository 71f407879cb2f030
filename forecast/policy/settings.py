"""The policy's settings and the fixed sentences every answer carries."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from forecast.contract import HORIZONS
from forecast.instruments import DEFAULT_SAFETY_RULES, SafetyRules

DECISION_SUPPORT = "Decision support for a clinician only; it does not replace clinical judgement."


NOT_SI_ASSESSMENT = (
    "This forecast is about the waning of the antidepressant benefit; it is not a "
    "suicide-risk assessment, and the absence of a flag is not a clearance."
)


CONDITIONAL_ON = (
    "Probability that the benefit will have waned within H days after as-of, "
    "conditional on everything known up to as-of: the time since the last session, "
    "the scores so far and that no waning has been seen yet."
)


POPULATION_LABEL = "population estimate, not personalised"


FORECAST_STATUSES = ("routine", "session_due")


@dataclass(frozen=True)
class PolicySettings:
    """Knobs of the suggestion and status rules (defaults documented in docs/suggestions.md).

    Parameters
    ----------
    threshold : float
        Risk (probability that the benefit has waned) accepted at the suggested
        session-by date. 0.20 books the next session while four in five
        comparable patients are still expected to be in response.
    min_interval_days : int
        No booster sooner than this many days after the last session. Seven
        days: ketamine's antidepressant effect builds over days after a
        session, a response is only measurable about a week later, and
        sessions closer than weekly are induction, not maintenance, schedules
        (SUSTAIN-1 maintenance was weekly at its most frequent).
    max_interval_days : int
        No suggestion later than this many days after the last session: 84
        (12 weeks) is the longest horizon the model reports, so a later date
        would rest on extrapolation.
    window_fraction : float
        The suggested window opens where the risk reaches this fraction of the
        threshold (0.5: half the threshold) and closes at the session-by date.
    min_phq9_scores : int
        Minimum number of valid PHQ-9 totals on record (2: the baseline and one
        after the last session).
    horizons : tuple of int
        Horizons (days after as-of) reported in the answer.
    band_level : float
        Coverage of the uncertainty band from the bootstrap ensemble.
    n_drivers : int
        Number of drivers reported (largest absolute contribution first).
    safety_rules : SafetyRules
        The fixed suicidal-ideation rules (forecast.instruments).
    """

    threshold: float = 0.20
    min_interval_days: int = 7
    max_interval_days: int = 84
    window_fraction: float = 0.5
    min_phq9_scores: int = 2
    horizons: tuple[int, ...] = HORIZONS
    band_level: float = 0.90
    n_drivers: int = 5
    safety_rules: SafetyRules = field(default=DEFAULT_SAFETY_RULES)

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if not 1 <= self.min_interval_days <= self.max_interval_days:
            raise ValueError(
                "min_interval_days must be at least 1 and at most max_interval_days, got "
                f"{self.min_interval_days} and {self.max_interval_days}"
            )
        if not 0.0 < self.window_fraction <= 1.0:
            raise ValueError(f"window_fraction must lie in (0, 1], got {self.window_fraction}")
        if not self.horizons or any(int(h) < 1 for h in self.horizons):
            raise ValueError(f"horizons must be positive whole days, got {self.horizons}")
        if not 0.0 < self.band_level < 1.0:
            raise ValueError(f"band_level must lie in (0, 1), got {self.band_level}")
        if self.min_phq9_scores < 1 or self.n_drivers < 0:
            raise ValueError("min_phq9_scores must be >= 1 and n_drivers >= 0")

    @property
    def grid_days(self) -> int:
        """Length of the daily risk grid (days after as-of)."""
        return int(max(self.max_interval_days, *self.horizons))


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float, or raise ValueError when it is not in (0, 1)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}") from None
    if not (0.0 < t < 1.0) or math.isnan(t):
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    return t
