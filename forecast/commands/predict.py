"""CLI commands (registered by forecast.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
