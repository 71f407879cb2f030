"""JSON responses encoded with orjson (Flask's JSON provider of the app).

A forecast answer is a few kilobytes of nested dicts and lists; the standard
library's encoder was a visible share of a request's time. orjson writes the
same JSON text (UTF-8 instead of ``\\u`` escapes for non-ASCII characters,
which JSON readers decode identically). Anything orjson cannot encode
natively goes through Flask's own ``default`` (dates as HTTP dates,
dataclasses, decimals, UUIDs), so what a route may return is unchanged; a
value orjson refuses altogether (an integer beyond 64 bits) falls back to the
standard encoder.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

# Datetimes go to Flask's ``default`` (HTTP dates, as before), not orjson's ISO form.
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


class OrjsonProvider(DefaultJSONProvider):
    """Flask's default provider with orjson doing the encoding."""

    def _options(self, indent: bool = False) -> int:
        opts = _OPTIONS
        if self.sort_keys:
            opts |= orjson.OPT_SORT_KEYS
        if indent:
            opts |= orjson.OPT_INDENT_2
        return opts

    def _encode(self, obj: Any, indent: bool = False) -> bytes | None:
        try:
            return orjson.dumps(obj, default=self.default, option=self._options(indent))
        except (orjson.JSONEncodeError, TypeError):
            return None

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialize ``obj`` to a JSON string (orjson unless ``kwargs`` ask for more)."""
        if not kwargs:
            raw = self._encode(obj)
            if raw is not None:
                return raw.decode()
        return super().dumps(obj, **kwargs)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """A JSON response of the arguments, as ``flask.jsonify`` gives."""
        obj = self._prepare_response_obj(args, kwargs)
        indent = (self.compact is None and self._app.debug) or self.compact is False
        raw = self._encode(obj, indent)
        if raw is None:
            return super().response(obj)
        return self._app.response_class(raw + b"\n", mimetype=self.mimetype)


def init_app(app: Flask) -> None:
    """Make orjson the app's JSON encoder (keeping the app's key-order setting)."""
    sort_keys = app.json.sort_keys
    app.json = OrjsonProvider(app)
    app.json.sort_keys = sort_keys
