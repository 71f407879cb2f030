"""Problems found in contract data: :class:`Problem` (one violation) and :class:`ContractError`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One violation of the data contract.

    Parameters
    ----------
    source : str
        File name (``"assessments.csv"``) or table name for JSON input.
    row : int or None
        CSV line number (header = line 1; Parquet rows use the same numbering)
        or the 0-based item index of a JSON list; None for file-level problems.
    column : str or None
        Column (or JSON key) concerned; None when the problem is not about one.
    message : str
        What is wrong and what is allowed.
    """

    source: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [self.source]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return ", ".join(where) + ": " + self.message

    def to_dict(self) -> dict[str, Any]:
        """The problem as a JSON-ready mapping (keys source, row, column, message)."""
        return {
            "source": self.source,
            "row": self.row,
            "column": self.column,
            "message": self.message,
        }


class ContractError(ValueError):
    """Raised when data violate the contract; ``.problems`` lists every violation."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        shown = "\n".join(str(p) for p in self.problems[:20])
        more = len(self.problems) - 20
        tail = f"\n... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.problems)} problem(s) in the data:\n{shown}{tail}")
