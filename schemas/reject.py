"""The reject record: one input file or segment that did not make it, with the stage and the reason."""

from __future__ import annotations

import dataclasses

from schemas import arrow


@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    """Why ``uri`` was dropped. ``reason`` is a short, countable code; ``detail`` is for people."""

    uri: str
    stage: str
    reason: str
    detail: str = ""
    duplicate_of: str | None = None

    def to_row(self) -> dict[str, str | None]:
        return arrow.to_row(self)

    @classmethod
    def from_row(cls, row: dict) -> "Reject":
        return arrow.from_row(cls, row)


REJECTS_SCHEMA = arrow.arrow_schema(Reject)


def reject_order(row: dict) -> tuple[str, str, str, str]:
    """The order of ``rejects.parquet``'s rows (``Reject.to_row``): by uri, stage, reason and detail."""
    return row["uri"], row["stage"], row["reason"], row["detail"]
