"""Command line of the foreign-generator check (design decision: the default kind).

The check itself lives in ``tests/fixtures/foreign_check.py``, because the slow
test ``tests/test_foreign_generator.py`` runs it on seed 7; this script runs it
with any options::

    python research/foreign_check.py [--train 4000] [--test 4000] [--seed 7]
        [--kind dynamic] [--penalizer auto] [--population followed|all] [--out FILE]

It writes ``research/out/foreign_check.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures.foreign_check import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
