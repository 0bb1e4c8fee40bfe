"""The segment record (FORMAT.md, segments layer): one curated audio segment and its labels.

A ``Segment`` is the ``KEY.json`` member of a segments shard (``to_json`` / ``from_json``: canonical,
strict JSON). ``SegmentAudio`` is a segment with its FLAC bytes as it crosses Ray to the labelers, and
``IndexRow`` is its flat row of ``index.parquet``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from schemas import arrow
from schemas.labels import Labels

SEGMENT_SCHEMA = "audiomill.segment/1"
SAMPLE_RATE = 16000
SEGMENT_KINDS: tuple[str, ...] = ("speech", "sound", "music", "mixed")


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """Where a segment came from: corpus, file and its content hash, license and split."""

    corpus: str
    uri: str
    sha256: str
    license: str
    split: str


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """One ≤ 30 s, 16 kHz mono segment of a source file, with everything known about it. ``extra`` is the
    one free-form field (``speech_ratio``, ``label``, ``manifest``, ``duplicates``, ``contained_in``, …)."""

    id: str
    source: Source
    start_s: float
    end_s: float
    kind: str
    labels: Labels = Labels()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    sample_rate: int = SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return round(self.end_s - self.start_s, 6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SEGMENT_SCHEMA,
            "id": self.id,
            "source": dataclasses.asdict(self.source),
            "start_s": self.start_s,
            "end_s": self.end_s,
            "duration_s": self.duration_s,
            "sample_rate": self.sample_rate,
            "kind": self.kind,
            "labels": self.labels.to_dict(),
            "extra": self.extra,
        }

    def to_json(self) -> str:
        """Canonical, strict JSON (sorted keys, no NaN or infinity): equal records give equal bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Segment":
        if d.get("schema") != SEGMENT_SCHEMA:
            raise ValueError(f"not a {SEGMENT_SCHEMA} record: schema={d.get('schema')!r}")
        return cls(id=d["id"], source=Source(**d["source"]), start_s=float(d["start_s"]), end_s=float(d["end_s"]),
                   kind=d["kind"], labels=Labels.from_dict(d.get("labels", {})), extra=d.get("extra", {}),
                   sample_rate=int(d.get("sample_rate", SAMPLE_RATE)))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Segment":
        return cls.from_dict(json.loads(text))


def segment_id(source_sha256: str, start_s: float, end_s: float) -> str:
    """Deterministic id: ``seg-`` + 16 hex of sha256(source hash, start, end in ms)."""
    key = f"{source_sha256}:{round(start_s * 1000)}:{round(end_s * 1000)}"
    return "seg-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentAudio:
    """A kept segment on its way through the labeler stages: what a labeler needs, and the audio."""

    key: str
    unit: str
    uri: str
    source_sha256: str
    start_s: float
    end_s: float
    kind: str
    labels: Labels
    flac: bytes
    unit_segments: int = 0           # how many of its unit's segments the pass labels (the writer waits for all)

    def to_row(self) -> dict[str, Any]:
        return arrow.to_row(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "SegmentAudio":
        return arrow.from_row(cls, row)


@dataclasses.dataclass(frozen=True, slots=True)
class IndexRow:
    """One row of ``index.parquet``: a segment flattened, so the corpus can be queried without audio."""

    key: str
    shard: str
    offset: int              # byte offset of the sample's first tar header in the shard
    size: int                # bytes of the sample's members, headers included
    corpus: str
    uri: str
    source_sha256: str
    license: str
    split: str
    start_s: float
    end_s: float
    duration_s: float
    kind: str
    transcript: str | None
    language: str | None
    label: str | None
    speech_ratio: float | None
    peak: float | None
    clipping_ratio: float | None
    lufs: float | None
    snr_db: float | None
    bandwidth_hz: float | None
    duplicates: int          # dropped copies whose labels were merged onto this segment's input
    contained_in: tuple[str, ...]   # uris of longer recordings that contain this segment's input
    language_prob: float | None      # of the language identifier
    disagreement: float | None       # WER between a manifest transcript and the ASR hypothesis
    events: tuple[str, ...]          # AudioSet (or manifest) event labels, best first
    speakers: int | None             # speaker count
    gender: str | None
    dnsmos_ovrl: float | None
    tempo_bpm: float | None
    music_key: str | None

    @classmethod
    def of(cls, seg: Segment, shard: str, offset: int, size: int) -> "IndexRow":
        t, q, events = seg.labels.transcript, seg.labels.quality, seg.labels.events
        return cls(
            key=seg.id, shard=shard, offset=offset, size=size, corpus=seg.source.corpus, uri=seg.source.uri,
            source_sha256=seg.source.sha256, license=seg.source.license, split=seg.source.split,
            start_s=seg.start_s, end_s=seg.end_s, duration_s=seg.duration_s, kind=seg.kind,
            transcript=t.text if t else None, language=(t.language or None) if t else None,
            label=events[0].label if events else seg.extra.get("label"),
            speech_ratio=seg.extra.get("speech_ratio"),
            peak=q.peak if q else None, clipping_ratio=q.clipping_ratio if q else None, lufs=q.lufs if q else None,
            snr_db=q.snr_db if q else None, bandwidth_hz=q.bandwidth_hz if q else None,
            duplicates=len(seg.extra.get("duplicates", [])),
            contained_in=tuple(c["uri"] for c in seg.extra.get("contained_in", [])),
            language_prob=t.language_prob if t else None, disagreement=t.disagreement if t else None,
            events=tuple(e.label for e in events),
            speakers=seg.labels.speakers.count if seg.labels.speakers else None,
            gender=(seg.labels.paralinguistic.gender or None) if seg.labels.paralinguistic else None,
            dnsmos_ovrl=q.dnsmos_ovrl if q else None,
            tempo_bpm=seg.labels.music.tempo_bpm if seg.labels.music else None,
            music_key=(seg.labels.music.key or None) if seg.labels.music else None,
        )

    def to_row(self) -> dict[str, Any]:
        return arrow.to_row(self)


INDEX_SCHEMA = arrow.arrow_schema(IndexRow)


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentLabels:
    """A segment's labels (and kind) after the labeler stages (the audio left behind)."""

    key: str
    unit: str
    labels: Labels
    kind: str = ""
    unit_segments: int = 0           # as in SegmentAudio


@dataclasses.dataclass(frozen=True, slots=True)
class UnitLabelled:
    """A labeler pass's word that all of a unit's labels are written (labels go to storage, not back)."""

    unit: str
    segments: int
