"""Test configuration: each area keeps its shared fixtures in tests/fixtures/<area>.py."""

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.simulation",
    "tests.fixtures.episodes",
    "tests.fixtures.models",
    "tests.fixtures.policy",
    "tests.fixtures.service",
    "tests.fixtures.clinic",
]
