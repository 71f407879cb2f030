"""Strict JSON parsing of request bodies, shared by /api/v1, /fhir/r4 and CDS Hooks.

Python's parser is lenient where RFC 8259 leaves room or says no:

- a key repeated in one object keeps its *last* value silently, so
  ``{"cssrs_ideation": 4, "cssrs_ideation": 0}`` would be stored as "no
  ideation" (which value a sender meant is unknowable, and other parsers keep
  the first);
- ``NaN``, ``Infinity`` and ``-Infinity`` are accepted although they are not
  JSON values.

:func:`parse_body` refuses both, and a body nested deeper than the parser can
follow, with :class:`JsonBodyError`. Each surface renders that error in its own
shape (problem+json on /api/v1 and CDS Hooks, an OperationOutcome on /fhir/r4)
with one helper: :func:`json_body` and ``service.fhir_api._body``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import request

from service.errors import ApiProblem, pointer

#: Media types accepted by :func:`json_body` (besides any ``+json`` type).
JSON_TYPES = ("application/json",)
#: At most this many repeated keys are listed in one answer.
MAX_LISTED = 20


class JsonBodyError(ValueError):
    """A request body that is not strict JSON.

    Attributes
    ----------
    title : str
        Short, stable summary (``"Malformed JSON"``, ``"Repeated JSON key"``).
    detail : str
        What is wrong, for a human (never a value from the body).
    errors : list of dict
        ``{"field": JSON pointer, "message": text}`` entries (repeated keys:
        the pointer of each repeated member, e.g. ``/assessments/0/cssrs_ideation``).
    """

    def __init__(self, title: str, detail: str, errors: list[dict[str, str]] | None = None):
        super().__init__(detail)
        self.title = title
        self.detail = detail
        self.errors = list(errors or [])


class _Repeated(Exception):
    """Raised by the first pass at the first repeated key (its path is not known there)."""


class _Pairs(list):  # type: ignore[type-arg]
    """An object of the second pass: its members in document order, repeats kept."""


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Repeated
    return out


def _reject_constant(name: str) -> Any:
    # Python's parser accepts NaN and Infinity; JSON (RFC 8259) does not.
    raise ValueError(f"{name} is not a JSON value")


def parse_body(raw: bytes | str) -> Any:
    """Parse a request body as strict JSON.

    Parameters
    ----------
    raw : bytes or str
        The body (UTF-8, or UTF-16/32 as :func:`json.loads` detects it).

    Returns
    -------
    Any
        The parsed document.

    Raises
    ------
    JsonBodyError
        Not JSON (with line and column), ``NaN`` / ``Infinity``, nested too
        deeply, or a key repeated in an object (every repeated member is named
        by its JSON pointer).
    """
    try:
        return json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_refuse_repeats)
    except _Repeated:
        pass
    except RecursionError:
        raise JsonBodyError("Malformed JSON", "The body is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        where = ""
        if isinstance(exc, json.JSONDecodeError):
            where = f" at line {exc.lineno}, column {exc.colno}"
        raise JsonBodyError("Malformed JSON", f"The body is not valid JSON{where}.") from None
    # Second pass (only for a refused body): keep every member to find where the
    # repeats are. The first pass parsed the document up to the repeat, and the
    # whole document again here, so no other error is expected; any would be
    # reported as malformed JSON all the same.
    try:
        tree = json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_Pairs)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise JsonBodyError("Malformed JSON", "The body is not valid JSON.") from None
    errors = []
    for where, key in _repeats(tree):
        if len(errors) == MAX_LISTED:
            break
        shown = key if len(key) <= 60 else key[:57] + "..."
        errors.append(
            {
                "field": where,
                "message": f"repeated key {shown!r}: a JSON object must name each key once "
                "(which value was meant cannot be known)",
            }
        )
    n = len(errors)
    raise JsonBodyError(
        "Repeated JSON key",
        f"{n}{'+' if n == MAX_LISTED else ''} key(s) repeated in a JSON object of the body; "
        "nothing was used. Send each key once per object.",
        errors,
    )


def _repeats(tree: Any) -> Iterator[tuple[str, str]]:
    """(JSON pointer of the repeated member, key) in document order (iterative walk)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(tree, ())]
    while stack:
        node, path = stack.pop()
        children: list[tuple[Any, tuple[Any, ...]]] = []
        if isinstance(node, _Pairs):
            seen: set[str] = set()
            reported: set[str] = set()
            for key, value in node:
                if key in seen and key not in reported:
                    reported.add(key)
                    yield pointer(*path, key), key
                seen.add(key)
                children.append((value, (*path, key)))
        elif isinstance(node, list):
            children = [(v, (*path, i)) for i, v in enumerate(node)]
        stack.extend(reversed(children))


def fhir_path(where: str, root: str = "Bundle") -> str:
    """A JSON pointer as a FHIRPath-like expression.

    ``/entry/0/resource/id`` -> ``Bundle.entry[0].resource.id``.
    """
    out = root
    for token in where.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        out += f"[{token}]" if token.isdigit() else f".{token}"
    return out


def json_body() -> Any:
    """The request's parsed JSON body, or a 415/400/413 problem (/api/v1 and CDS Hooks).

    Only ``application/json`` (or a ``+json`` type) is accepted; the size limit
    (``MAX_CONTENT_LENGTH``) is enforced by werkzeug before parsing. The body
    is strict JSON (:func:`parse_body`): a key repeated in an object, ``NaN`` /
    ``Infinity`` and too deep nesting are 400, a repeated key named by its JSON
    pointer in ``errors``.
    """
    mimetype = request.mimetype or ""
    if mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
        raise ApiProblem(
            415,
            detail="Send the body as JSON with 'Content-Type: application/json'.",
            errors=[{"field": "header/Content-Type", "message": f"got {mimetype or 'none'!r}"}],
        )
    raw = request.get_data(cache=True)  # raises 413 beyond MAX_CONTENT_LENGTH
    if not raw.strip():
        raise ApiProblem(400, "Empty body", "The request body is empty; send a JSON object.")
    try:
        return parse_body(raw)
    except JsonBodyError as exc:
        raise ApiProblem(400, exc.title, exc.detail, exc.errors) from None
