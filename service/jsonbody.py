"""Strict JSON parsing of request bodies, shared by /api/v1, /fhir/r4 and CDS Hooks.

Python's parser is lenient where RFC 8259 leaves room or says no:

- a key repeated in one object keeps its *last* value silently, so
  ``{"cssrs_ideation": 4, "cssrs_ideation": 0}`` would be stored as "no
  ideation" (which value a sender meant is unknowable, and other parsers keep
  the first);
- ``NaN``, ``Infinity`` and ``-Infinity`` are accepted although they are not
  JSON values.

:func:`parse_body` refuses both with :class:`JsonBodyError`. Before anything is
parsed, :func:`check_shape` bounds the work a body can cause: nesting deeper
than :data:`MAX_DEPTH` (400) or an array or object with more than
:data:`MAX_ITEMS` members (413) is refused from a scan of the raw bytes, so a
body of three million empty objects never becomes three million Python objects.
A string holding U+0000 (NUL) is refused too (422): no store can keep it
(PostgreSQL text cannot) and no id or value needs it. Each surface renders that error in its own
shape (problem+json on /api/v1 and CDS Hooks, an OperationOutcome on /fhir/r4)
with one helper: :func:`json_body` and ``service.fhir_api._body``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
from flask import current_app, has_app_context, request

from service.errors import ApiProblem, pointer

#: Media types accepted by :func:`json_body` (besides any ``+json`` type).
JSON_TYPES = ("application/json",)
#: At most this many repeated keys are listed in one answer.
MAX_LISTED = 20
#: Deepest nesting of arrays and objects accepted (FHIR resources need about 10).
MAX_DEPTH = 64
#: Most members of one array or object (``KAP_MAX_JSON_ITEMS`` overrides it).
MAX_ITEMS = 20_000

# Structural bytes of JSON; everything else is dropped before the depth scan.
_STRUCTURE = frozenset(b"[]{},")
_DROP = bytes(b for b in range(256) if b not in _STRUCTURE)
# +1 for an opening bracket, -1 for a closing one, by byte value.
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_OPENS = _STEP == 1
_COMMA = ord(",")
# A JSON string (escapes included); replaced by "" so its brackets and commas do not count.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# The escape \u0000 not preceded by an odd number of backslashes.
_NUL_ESCAPE = re.compile(rb'(?<!\\)(?:\\\\)*\\u0000', re.IGNORECASE)


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

    def __init__(
        self,
        title: str,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        status: int = 400,
    ):
        super().__init__(detail)
        self.title = title
        self.detail = detail
        self.errors = list(errors or [])
        #: 400 (not JSON), 413 (too many members), 422 (a NUL in a string).
        self.status = status


def _limits() -> tuple[int, int]:
    if has_app_context():
        cfg = current_app.config
        return int(cfg.get("KAP_MAX_JSON_DEPTH", MAX_DEPTH)), int(
            cfg.get("KAP_MAX_JSON_ITEMS", MAX_ITEMS)
        )
    return MAX_DEPTH, MAX_ITEMS


def check_shape(raw: bytes, max_depth: int | None = None, max_items: int | None = None) -> None:
    """Refuse a body too deep, too wide or holding a NUL, from its bytes (nothing parsed).

    The scan is vectorised (regular expressions and numpy over the bytes): it
    costs a few milliseconds per megabyte whatever the body holds.

    Raises
    ------
    JsonBodyError
        400 nested deeper than ``max_depth``; 413 an array or object with more
        than ``max_items`` members; 422 a string holding ``\\u0000``.
    """
    depth_limit, items_limit = _limits()
    depth_limit = max_depth or depth_limit
    items_limit = max_items or items_limit
    if (b"\\u0000" in raw or b"\\U0000" in raw) and _NUL_ESCAPE.search(raw):
        raise JsonBodyError(
            "Control character",
            "A string in the body holds U+0000 (NUL); ids, names and values may not.",
            status=422,
        )
    marks = _STRING.sub(b'""', raw).translate(None, _DROP)
    if not marks:
        return
    a = np.frombuffer(marks, dtype=np.uint8)
    opener = _OPENS[a]
    depth = np.cumsum(_STEP[a], dtype=np.int32)
    if int(depth.max()) > depth_limit:
        raise JsonBodyError(
            "Malformed JSON",
            f"The body is nested too deeply (at most {depth_limit} levels).",
        )
    comma = a == _COMMA
    if int(comma.sum()) < items_limit:
        return  # no container can hold more members than there are commas + 1
    # Members of one container: the commas at its depth after its opener and before
    # the next opener at that depth. A stable sort by depth keeps document order
    # within a depth (a radix sort: depth fits a byte here), so a running count of
    # openers names each comma's container.
    keep = opener | comma
    level = depth[keep].astype(np.uint8)
    order = np.argsort(level, kind="stable")
    container = np.cumsum(opener[keep][order])
    counts = np.bincount(container[comma[keep][order]])
    if len(counts) and int(counts.max()) + 1 > items_limit:
        raise JsonBodyError(
            "Body too large",
            f"An array or object of the body has more than {items_limit} members; "
            "split the request.",
            status=413,
        )


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
    check_shape(raw.encode("utf-8") if isinstance(raw, str) else _utf8(raw))
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


def _utf8(raw: bytes) -> bytes:
    """The body as UTF-8 bytes (json.loads also accepts UTF-16/32 bodies)."""
    encoding = json.detect_encoding(raw)
    if encoding.replace("-", "").lower() in ("utf8", "utf8sig"):
        return raw
    try:
        return raw.decode(encoding).encode("utf-8")
    except UnicodeError:
        return raw  # json.loads reports it as malformed


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
    """The request's parsed JSON body, or a 415/400/413/422 problem (/api/v1 and CDS Hooks).

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
        raise ApiProblem(exc.status, exc.title, exc.detail, exc.errors) from None


def bound_list(body: Any, key: str, limit: int) -> None:
    """Refuse ``body[key]`` longer than ``limit`` (413) before any of its items is looked at.

    Lists of a body are bounded once more by their route (a batch's entries,
    the rows of one call) below the general :data:`MAX_ITEMS`.
    """
    items = body.get(key) if isinstance(body, dict) else None
    if isinstance(items, list) and len(items) > limit:
        raise ApiProblem(
            413,
            "Too many items",
            f"{len(items)} entries in /{key}; at most {limit} per call: split the request.",
            errors=[{"field": f"/{key}", "message": f"at most {limit} entries per call"}],
        )
