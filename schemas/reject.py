"""The reject record: one input file or segment that did not make it, with the stage and the reason."""

from __future__ import annotations

import dataclasses

import pyarrow as pa

REJECTS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("duplicate_of", pa.string()),
    ]
)


@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    """Why ``uri`` was dropped. ``reason`` is a short, countable code; ``detail`` is for people."""

    uri: str
    stage: str
    reason: str
    detail: str = ""
    duplicate_of: str | None = None

    def to_row(self) -> dict[str, str | None]:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> "Reject":
        return cls(**{f.name: row.get(f.name) for f in dataclasses.fields(cls)})
