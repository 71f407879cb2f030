"""What the policy reads from a loaded model version (or anything shaped like one).

A :class:`forecast.registry.LoadedModel` carries ``version``, ``card``,
``bundle``, ``definition`` and optionally ``population_curve``.
"""

from __future__ import annotations

from typing import Any


def outcome_definition(model: Any) -> Any:
    definition = getattr(model, "definition", None)
    if definition is None:
        from forecast.outcomes import OutcomeDefinition

        definition = OutcomeDefinition()
    return definition


def definition_value(definition: Any, name: str, default: float) -> float:
    """One threshold of the outcome definition (``default`` when the definition lacks it)."""
    return float(getattr(definition, name, default))


def model_version(model: Any) -> str | None:
    v = getattr(model, "version", None)
    return None if v is None else str(v)


def model_bundle(model: Any) -> Any:
    return getattr(model, "bundle", model)


def population_from_model(model: Any) -> dict[str, list[float]] | None:
    """The population survival curve stored with a model version, if any.

    Looked up as ``model.population_curve``, ``model.card["population_curve"]``
    or ``model.bundle.population_curve``: a dict with ``days`` (0, 1, ...) and
    ``survival`` (smooth interval-censored estimate over the training
    episodes, :func:`forecast.training.population_curve`, aggregate only),
    stored at train time by :func:`forecast.training.train_and_save`.
    """
    for holder in (model, getattr(model, "bundle", None)):
        curve = getattr(holder, "population_curve", None)
        if curve:
            return dict(curve)
    card = getattr(model, "card", None)
    if isinstance(card, dict) and card.get("population_curve"):
        return dict(card["population_curve"])
    return None
