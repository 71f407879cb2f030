"""Command modules of the ``forecast`` CLI; each exposes ``COMMANDS``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def models_option(param: str = "models") -> Callable[[Any], Any]:
    """The ``--models DIR`` option every registry command shares.

    Resolution of an unset option (``FORECAST_MODELS``, else ``./models``) is
    done once, by :func:`forecast.registry.models_dir`.
    """
    return click.option(
        "--models",
        param,
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Model registry folder (default: $FORECAST_MODELS, else ./models).",
    )
