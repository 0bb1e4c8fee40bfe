"""Records of the build job that cross a Ray boundary: what the scan learns of each segment (driver plans
the split and the mix from it), a unit of work for the build stage and what it made, the plan of one example
shard and what was written, and the examples layer's index row (FORMAT.md)."""

from __future__ import annotations

import dataclasses

from schemas import arrow
from schemas.reject import Reject
from schemas.shard import PlannedSample
from schemas.unit import SegmentRef


@dataclasses.dataclass(frozen=True, slots=True)
class ScanRow:
    key: str
    unit: str
    source_sha256: str
    kind: str
    duration_s: float
    embedding: tuple[float, ...] = ()     # the main speaker's voice, when labelled


@dataclasses.dataclass(frozen=True, slots=True)
class BuildUnit:
    """Segments of one input shard (``part``) with their side of the split, or a batch of instructions
    (JSON lines) for voice chat."""

    unit: str
    part: str = ""
    segments: tuple[SegmentRef, ...] = ()
    held_out: tuple[bool, ...] = ()
    instructions: tuple[str, ...] = ()
    instructions_held_out: tuple[bool, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ExampleRow:
    """One example in a unit's work tar, with what the index and the summary need of it."""

    key: str
    folder: str                  # pretrain | pretrain/eval | sft | …
    stage: str
    task: str
    template: str
    rejected_kind: str
    n_audio: int
    duration_s: float            # its audios together
    segments: tuple[str, ...]
    labels_used: tuple[str, ...]
    offset: int
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class Count:
    name: str
    n: int


@dataclasses.dataclass(frozen=True, slots=True)
class BuiltUnit:
    unit: str
    tar: str                     # the unit's examples, in _work/examples/
    examples: tuple[ExampleRow, ...]
    rejects: tuple[Reject, ...]
    counts: tuple[Count, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ExampleShardPlan:
    name: str                    # "sft/eval/examples-000000.tar"
    samples: tuple[PlannedSample, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ExampleShardResult:
    name: str
    sha256: str
    bytes: int
    samples: int
    keys: tuple[str, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ExampleIndexRow:
    key: str
    shard: str
    offset: int
    size: int
    stage: str
    task: str
    template: str
    split: str                   # train | eval
    rejected_kind: str
    n_audio: int
    duration_s: float
    segments: tuple[str, ...]
    labels_used: tuple[str, ...]


EXAMPLE_INDEX_SCHEMA = arrow.arrow_schema(ExampleIndexRow)
