"""Command line of the independent cohort generator used by the foreign check.

The generator lives in ``tests/fixtures/foreign_generator.py`` (the tests use
it); this script writes one of its cohorts as a contract folder::

    python research/foreign_generator.py --patients 1000 --seed 1 [--end 2026-06-30] --out DIR
    forecast validate DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.foreign_generator import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
