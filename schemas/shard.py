"""Records of the plan and pack stages: which samples go into a shard with the changes dedup and the
labelers made to them (plan tasks → storage; the driver sends each pack task ranges of them), and what a
written shard holds (pack tasks → driver)."""

from __future__ import annotations

import dataclasses
from typing import Any

from schemas import arrow
from schemas.labels import Labels


@dataclasses.dataclass(frozen=True, slots=True)
class DuplicateRef:
    """A dropped copy of this segment's input. ``labels`` holds what of its labels could not be merged
    (a conflicting or unplaceable label), so nothing it carried is lost."""

    uri: str
    sha256: str
    how: str                          # exact | near
    labels: Labels = Labels()


@dataclasses.dataclass(frozen=True, slots=True)
class Containment:
    """A longer recording that contains this segment's whole input, and where (seconds in that recording)."""

    uri: str
    sha256: str
    start_s: float
    end_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class Patch:
    """Changes to one segment record: ``labels`` kinds set on it (carried over from other inputs, or made by
    labelers), a class label for its ``extra``, and the dropped copies and containing recordings to list
    in its ``extra``."""

    labels: Labels = Labels()
    label: str = ""                   # a class label for a speech segment (its ``extra.label``)
    duplicates: tuple[DuplicateRef, ...] = ()
    contained_in: tuple[Containment, ...] = ()
    kind: str = ""                    # a new kind, when the labelers refined it ("" → unchanged)

    def is_empty(self) -> bool:
        return not (self.labels.kinds() or self.label or self.duplicates or self.contained_in or self.kind)


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedSample:
    key: str
    part: str                         # the unit's part tar
    offset: int
    size: int
    patch: Patch = Patch()            # dedup's changes
    unit: str = ""                    # the unit whose labeler passes' rows pack lays over ``patch``


@dataclasses.dataclass(frozen=True, slots=True)
class UnitPlanned:
    """What the plan task says of one kept unit (pack tasks read its samples from its plan file): each
    kept sample's size in bytes, in order (little-endian int64), and what the filters dropped. The filters'
    rejects themselves are in the unit's reject part (``OUTPUT/_work/rejects/<unit>.arrow``); only their
    count by reason comes back."""

    unit: str
    sizes: bytes
    reject_reasons: tuple[str, ...] = ()      # sorted …
    reject_counts: tuple[int, ...] = ()       # … with how many rejects each
    dropped: int = 0                          # segments the filters dropped


@dataclasses.dataclass(frozen=True, slots=True)
class PlanRange:
    """Samples ``start``–``stop`` of a unit's plan file (``OUTPUT/_work/plan/<unit>.arrow``)."""

    unit: str
    start: int
    stop: int


@dataclasses.dataclass(frozen=True, slots=True)
class ShardPlan:
    name: str
    ranges: tuple[PlanRange, ...]

    def to_row(self) -> dict[str, Any]:
        return arrow.to_row(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ShardPlan":
        return arrow.from_row(cls, row)


@dataclasses.dataclass(frozen=True, slots=True)
class ShardResult:
    name: str
    sha256: str
    bytes: int
    samples: int                      # its index rows are in OUTPUT/_work/index/<name>.arrow

    def to_row(self) -> dict[str, Any]:
        return arrow.to_row(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ShardResult":
        return arrow.from_row(cls, row)
