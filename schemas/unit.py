"""What the ingest stage learns about one input unit in its single decode pass (crosses Ray to the driver,
and is kept as the unit's completion marker): hashes, fingerprint, what dedup ranks copies by, and the
segments it wrote to the unit's part tar — or the reject."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from schemas import arrow
from schemas.labels import Labels
from schemas.reject import Reject
from schemas.shard import Patch


@dataclasses.dataclass(frozen=True, slots=True)
class SegmentRef:
    """One segment in a unit's part tar and the labels its record holds (the source's labels, which dedup
    carries over when the unit is dropped, and the measurements, which it does not)."""

    key: str
    start_s: float
    end_s: float
    kind: str
    offset: int             # byte offset of the sample in the part tar
    size: int               # bytes of the sample, headers included
    whole_utterance: bool
    labels: Labels


@dataclasses.dataclass(frozen=True, slots=True)
class UnitResult:
    unit: str
    uri: str
    reject: Reject | None = None          # set when the input was rejected; nothing else is then
    file_sha256: str = ""
    pcm_sha256: str = ""                  # of the standardised 16-bit PCM: exact duplicates share it
    duration_s: float = 0.0
    codec: str = ""                       # "WAV/PCM_16", "MP3/MPEG_LAYER_III", "ffmpeg/aac", …
    lossless: bool = False
    native_sample_rate: int = 0
    bandwidth_hz: float = 0.0             # widest segment bandwidth at 16 kHz
    level_dbfs: float = -120.0            # mean power of the frames above -60 dBFS
    label_count: int = 0                  # labels the input carries (see InputItem.label_count)
    class_label: str = ""                 # the source's class label of the whole input (InputItem.label)
    fingerprint: bytes = b""              # landmark hashes, little-endian int64 (hash, frame) pairs
    part: str = ""                        # url of the unit's part tar ("" when it has no segments)
    segments: tuple[SegmentRef, ...] = ()
    warnings: tuple[str, ...] = ()
    hashes: int = 0                       # the fingerprint's size, segments and their seconds: what the driver
    segment_count: int = 0                # keeps (``lean``) where the marker keeps the fingerprint and the
    segment_seconds: float = 0.0          # segments

    @property
    def ok(self) -> bool:
        return self.reject is None

    def ref(self, marker: str = "", patch_keys: tuple[str, ...] = (), patches: tuple[Patch, ...] = ()) -> "UnitRef":
        """What the passes after dedup get of this unit: its segments are read from ``marker``."""
        lean = self.lean()
        return UnitRef(self.unit, self.uri, self.file_sha256, self.part, lean.segment_count, lean.segment_seconds,
                       marker, patch_keys=patch_keys, patches=patches)

    def lean(self) -> "UnitResult":
        """The record without its fingerprint and segment records, which stay in the unit's marker: what
        the ingest tasks send the driver, so it never holds, or even receives, a corpus of them."""
        if not self.fingerprint and not self.segments:
            return self
        return dataclasses.replace(self, fingerprint=b"", segments=(), hashes=len(self.fingerprint) // 16,
                                   segment_count=len(self.segments),
                                   segment_seconds=sum(s.end_s - s.start_s for s in self.segments))

    def fingerprint_array(self) -> np.ndarray:
        """(n, 2) int64: column 0 the hash, column 1 the anchor frame."""
        return unpack_fingerprint(self.fingerprint)

    def to_row(self) -> dict[str, Any]:
        return arrow.to_row(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "UnitResult":
        return arrow.from_row(cls, row)


def pack_fingerprint(fp: np.ndarray) -> bytes:
    return np.ascontiguousarray(fp, dtype="<i8").tobytes()


def unpack_fingerprint(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<i8").reshape(-1, 2)


@dataclasses.dataclass(frozen=True, slots=True)
class PartRef:
    """A kept unit's part tar, its segments and dedup's patches to them: what the labeler pass reads."""

    unit: str
    uri: str
    source_sha256: str
    part: str
    segments: tuple[SegmentRef, ...]
    patches: tuple[Patch, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class UnitRef:
    """A kept unit as the driver sends it to the passes after dedup: the task reads its segments from its
    completion marker (``marker``), or, for the label job's units (a parent's shards), from its rows
    ``[index_start, index_stop)`` of the parent's ``index.parquet`` (``index``), so the driver never holds a
    corpus of segment records. ``patch_keys`` and ``patches``: dedup's changes to some of its segments, by key."""

    unit: str
    uri: str
    source_sha256: str
    part: str
    segment_count: int = 0                # what the driver knows of its segments (``UnitResult.lean``)
    segment_seconds: float = 0.0
    marker: str = ""
    index: str = ""
    index_start: int = 0
    index_stop: int = 0
    patch_keys: tuple[str, ...] = ()
    patches: tuple[Patch, ...] = ()

