"""orjson encodes the service's JSON responses as Flask's own provider would (same values)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import numpy as np
from flask.json.provider import DefaultJSONProvider

from service.jsonprovider import OrjsonProvider


def _both(app: Any, obj: Any) -> tuple[Any, Any]:
    with app.app_context():
        assert isinstance(app.json, OrjsonProvider)
        fast = json.loads(app.json.response(obj).get_data())
        ref = DefaultJSONProvider(app)
        ref.sort_keys = app.json.sort_keys
        slow = json.loads(ref.response(obj).get_data())
    return fast, slow


def test_values_and_key_order_are_flasks(make_app: Any) -> None:
    app = make_app()
    obj = {
        "z": 1,
        "a": [1.5, None, True, "é ≥ 20 %"],
        "when": dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC),
        "day": dt.date(2026, 3, 1),
        "id": uuid.UUID(int=7),
        3: "int key",
    }
    fast, slow = _both(app, obj)
    assert fast == slow
    assert list(fast) == list(slow)  # the answer's documented key order is kept


def test_what_orjson_refuses_falls_back_to_the_standard_encoder(make_app: Any) -> None:
    app = make_app()
    fast, slow = _both(app, {"big": 2**70})
    assert fast == slow == {"big": 2**70}


def test_numpy_scalars_and_arrays_are_encoded(make_app: Any) -> None:
    app = make_app()
    with app.app_context():
        body = json.loads(app.json.response({"n": np.int64(3), "a": np.arange(2.0)}).get_data())
    assert body == {"n": 3, "a": [0.0, 1.0]}
