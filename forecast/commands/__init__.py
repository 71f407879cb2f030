"""Command modules of the ``forecast`` CLI; each exposes ``COMMANDS``."""
