"""The bundle's file format, kinds and families, and the error it raises."""

from __future__ import annotations

from forecast.contract import HORIZONS

FORMAT = "kap-forecast-bundle"
FORMAT_VERSION = 2
#: Versions :meth:`Bundle.load` reads. Version 1 wrote the categorical
#: features as a JSON object, whose keys the sorted-key writer reordered, so a
#: version-1 encoder read back as written put the categorical coefficients on
#: the wrong one-hot columns; its order is restored from the stored
#: ``design_columns`` (the fit order) on load. Version 2 writes a list of
#: ``[name, levels]`` pairs.
READABLE_VERSIONS = (1, 2)
AFT_FAMILIES: tuple[str, ...] = ("weibull", "lognormal", "loglogistic")
KINDS: tuple[str, ...] = (
    "km", "cox", "weibull", "lognormal", "loglogistic", "landmark", "dynamic", "piecewise"
)
#: The kind ``forecast train`` fits unless told otherwise (see docs/models.md).
DEFAULT_KIND = "piecewise"
#: Families whose linear predictor is on the log-hazard scale (positive: shorter benefit);
#: the AFT families' is on the log-time scale (positive: longer benefit).
HAZARD_FAMILIES: tuple[str, ...] = ("cox", "piecewise")
#: Features an ``as_of`` bundle reads its clock from (see :func:`clock_arrays`).
CLOCK_FEATURES: dict[str, str] = {
    "elapsed": "elapsed_days",
    "since_assessment": "days_since_assessment",
    "assessments": "n_assessments_since_session",
}
JSON_NAME = "bundle.json"
NPZ_NAME = "bundle.npz"



class BundleError(ValueError):
    """A bundle file is missing, malformed or of an unknown format."""



def default_horizons() -> tuple[int, ...]:
    """The contract horizons (days)."""
    return tuple(HORIZONS)
