"""The segment record (FORMAT.md, segments layer): one curated audio segment and its labels.

Records are immutable dataclasses. They cross the Ray boundary as JSON text (``to_json`` / ``from_json``)
and are flattened into one explicit Arrow schema for ``index.parquet`` by ``to_index_row``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal

import pyarrow as pa

SEGMENT_SCHEMA = "audiomill.segment/1"
SAMPLE_RATE = 16000

SegmentKind = Literal["speech", "sound", "music", "mixed"]
SEGMENT_KINDS: tuple[str, ...] = ("speech", "sound", "music", "mixed")


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """Where a segment came from: corpus, file and its content hash, license and split."""

    corpus: str
    uri: str
    sha256: str
    license: str
    split: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """One ≤ 30 s, 16 kHz mono segment of a source file, with everything known about it."""

    id: str
    source: Source
    start_s: float
    end_s: float
    kind: str
    labels: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return round(self.end_s - self.start_s, 6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SEGMENT_SCHEMA,
            "id": self.id,
            "source": self.source.to_dict(),
            "start_s": self.start_s,
            "end_s": self.end_s,
            "duration_s": self.duration_s,
            "sample_rate": self.sample_rate,
            "kind": self.kind,
            "labels": _drop_empty(self.labels),
            "extra": self.extra,
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, so equal records give equal bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Segment":
        if d.get("schema") != SEGMENT_SCHEMA:
            raise ValueError(f"not a {SEGMENT_SCHEMA} record: schema={d.get('schema')!r}")
        return cls(
            id=d["id"],
            source=Source(**d["source"]),
            start_s=float(d["start_s"]),
            end_s=float(d["end_s"]),
            kind=d["kind"],
            labels=d.get("labels", {}),
            extra=d.get("extra", {}),
            sample_rate=int(d.get("sample_rate", SAMPLE_RATE)),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Segment":
        return cls.from_dict(json.loads(text))


def segment_id(source_sha256: str, start_s: float, end_s: float) -> str:
    """Deterministic id: ``seg-`` + 16 hex of sha256(source hash, start, end in ms)."""
    key = f"{source_sha256}:{round(start_s * 1000)}:{round(end_s * 1000)}"
    return "seg-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _drop_empty(labels: dict[str, Any]) -> dict[str, Any]:
    """A missing label is absent, never null or empty (FORMAT.md)."""
    return {k: v for k, v in labels.items() if v not in (None, {}, [], "")}


# index.parquet: one row per segment, labels flattened so the corpus can be queried without audio.
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("offset", pa.int64()),        # byte offset of the sample's first tar header in the shard
        ("size", pa.int64()),          # bytes of the sample's members, headers included
        ("corpus", pa.string()),
        ("uri", pa.string()),
        ("source_sha256", pa.string()),
        ("license", pa.string()),
        ("split", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("kind", pa.string()),
        ("transcript", pa.string()),
        ("language", pa.string()),
        ("label", pa.string()),
        ("speech_ratio", pa.float64()),
        ("peak", pa.float64()),
        ("clipping_ratio", pa.float64()),
        ("lufs", pa.float64()),
        ("snr_db", pa.float64()),
        ("bandwidth_hz", pa.float64()),
    ]
)


def to_index_row(seg: Segment, shard: str, offset: int, size: int) -> dict[str, Any]:
    """Flatten a segment into an ``INDEX_SCHEMA`` row (absent labels become nulls here only)."""
    transcript = seg.labels.get("transcript", {})
    quality = seg.labels.get("quality", {})
    events = seg.labels.get("events", [])
    return {
        "key": seg.id,
        "shard": shard,
        "offset": offset,
        "size": size,
        "corpus": seg.source.corpus,
        "uri": seg.source.uri,
        "source_sha256": seg.source.sha256,
        "license": seg.source.license,
        "split": seg.source.split,
        "start_s": seg.start_s,
        "end_s": seg.end_s,
        "duration_s": seg.duration_s,
        "kind": seg.kind,
        "transcript": transcript.get("text"),
        "language": transcript.get("language"),
        "label": events[0]["label"] if events else seg.extra.get("label"),
        "speech_ratio": seg.extra.get("speech_ratio"),
        "peak": quality.get("peak"),
        "clipping_ratio": quality.get("clipping_ratio"),
        "lufs": quality.get("lufs"),
        "snr_db": quality.get("snr_db"),
        "bandwidth_hz": quality.get("bandwidth_hz"),
    }
