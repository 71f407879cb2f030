"""Questionnaires: how a form's own linkIds and answer codes map to contract columns and scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from forecast.fhir.codes import LINKID_COLUMNS
from forecast.fhir.values import _ordinal
from forecast.instruments import (
    LOINC_SYSTEM,
)


@dataclass
class QuestionnaireMap:
    """How a Questionnaire's own linkIds map to contract columns, read from its items.

    An item coded with a LOINC PHQ-9 or C-SSRS question (``item.code``) maps
    its linkId, whatever the linkId is; an ``answerOption.valueCoding`` with an
    ``ordinalValue`` / ``itemWeight`` extension gives that answer's score, so a
    response that answers with the form's own codes can be scored.
    """

    columns: dict[str, str] = field(default_factory=dict)  # linkId -> column
    weights: dict[tuple[str, str | None, str], float] = field(default_factory=dict)

    @classmethod
    def of(cls, res: Any) -> QuestionnaireMap:
        out = cls()

        def walk(items: Sequence[Any]) -> None:
            for it in items or []:
                link = it.linkId or ""
                for c in it.code or []:
                    if c.system in (LOINC_SYSTEM, None) and c.code:
                        column = LINKID_COLUMNS.get(c.code.lower())
                        if column is not None:
                            out.columns.setdefault(link, column)
                            break
                for opt in it.answerOption or []:
                    coding = opt.valueCoding
                    if coding is None or not coding.code:
                        continue
                    w = _ordinal(coding)
                    if w is None:
                        w = _ordinal(opt)
                    if w is not None:
                        out.weights[(link, coding.system, coding.code)] = w
                walk(it.item or [])

        walk(res.item or [])
        return out

    def weight(self, link_id: str, answer: Any) -> float | None:
        """The score the form gives to an answer's coding (None when it gives none)."""
        coding = getattr(answer, "valueCoding", None)
        if coding is None or not coding.code:
            return None
        w = self.weights.get((link_id, coding.system, coding.code))
        if w is None and coding.system is None:  # a response may leave the system out
            w = next(
                (
                    v
                    for (lk, _, code), v in self.weights.items()
                    if lk == link_id and code == coding.code
                ),
                None,
            )
        return w


def _contained_form(res: Any) -> QuestionnaireMap | None:
    """The Questionnaire a response carries itself (``questionnaire = "#<id>"``), if any."""
    ref = str(res.questionnaire or "")
    if not ref.startswith("#"):
        return None
    for inner in res.contained or []:
        if inner.get_resource_type() == "Questionnaire" and inner.id == ref[1:]:
            return QuestionnaireMap.of(inner)
    return None


def questionnaire_keys(res: Any, full_url: str | None = None) -> list[str]:
    """The references by which a QuestionnaireResponse may name this Questionnaire."""
    keys = []
    if res.url:
        keys.append(str(res.url))
        if res.version:
            keys.append(f"{res.url}|{res.version}")
    if res.id:
        keys.append(f"Questionnaire/{res.id}")
    if full_url:
        keys.append(full_url)
    return keys


def load_questionnaires(folder: str | Any) -> list[Any]:
    """Questionnaire resources from the ``*.json`` files of ``folder`` (validated).

    Raises ``ValueError`` naming the file when one is not a valid R4
    Questionnaire, or has neither ``url`` nor ``id`` to be referenced by.
    """
    import json
    from pathlib import Path

    from fhir.resources.R4B.questionnaire import Questionnaire

    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, Mapping) or doc.get("resourceType") != "Questionnaire":
                raise ValueError("not a Questionnaire resource")
            q = Questionnaire.model_validate(doc)
        except (ValueError, ValidationError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: {str(err).splitlines()[0]}") from None
        if not questionnaire_keys(q):
            raise ValueError(f"{path}: a Questionnaire needs a url or an id to be referenced")
        out.append(q)
    return out
