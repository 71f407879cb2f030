"""How data-contract problems are shown: "did you mean", and consequences summarised.

A misspelled column (``phq9_totl``) makes the real column (``phq9_total``)
missing, and every row then fails for the same reason ("the row holds no
answer"). Those problems are caused by the first one: they are counted in one
line under it, not listed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

_ALLOWED = re.compile(r"allowed columns: (.*)$")
_CASCADE_MESSAGES = ("the row holds no answer",)


def _suggestion(problem: Any) -> str | None:
    msg = str(getattr(problem, "message", ""))
    if "unknown column" not in msg or not getattr(problem, "column", None):
        return None
    m = _ALLOWED.search(msg)
    allowed = [c.strip() for c in m.group(1).split(",")] if m else []
    close = difflib.get_close_matches(str(problem.column), allowed, n=1, cutoff=0.6)
    return close[0] if close else None


def arrange(problems: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Lines to print and one-line summaries of the problems caused by earlier ones."""
    renamed: dict[str, dict[str, str]] = {}  # source -> {intended column: written column}
    lines: list[str] = []
    for p in problems:
        close = _suggestion(p)
        if close is not None:
            renamed.setdefault(str(p.source), {})[close] = str(p.column)
    caused: dict[tuple[str, str], list[Any]] = {}
    for p in problems:
        src = str(p.source)
        close = _suggestion(p)
        if close is not None:
            lines.append(f"{p}; did you mean '{close}'?")
            continue
        if src in renamed and (str(p.column) in renamed[src]
                               or str(p.message).startswith(_CASCADE_MESSAGES)):
            written = renamed[src].get(str(p.column)) or next(iter(renamed[src].values()))
            caused.setdefault((src, written), []).append(p)
            continue
        lines.append(str(p))
    summaries = []
    for (src, written), items in caused.items():
        rows = sorted({int(p.row) for p in items if p.row is not None})
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        kinds = sorted({str(p.message).split(":")[0] for p in items})
        summaries.append(
            f"{src}: {len(items)} more problem(s) follow from the unknown column "
            f"'{written}' (rows {shown}: {'; '.join(kinds)}); fix the column name first")
    return lines, summaries


def one_line(problems: Sequence[Any], folder: Any = None) -> str:
    """One line for an ``Error:``: the first problem, the count, and what to run."""
    lines, summaries = arrange(problems)
    first = (lines or summaries or ["(no detail)"])[0]
    where = f" {folder}" if folder is not None else " DIR"
    rest = len(problems) - 1
    more = f" and {rest} more" if rest > 0 else ""
    return (f"the data does not follow the data contract: {first}{more}; run "
            f"`forecast validate{where}` for every problem")
