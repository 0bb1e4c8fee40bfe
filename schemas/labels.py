"""Label types of a segment (FORMAT.md ``labels``): typed, immutable, each saying where it came from.

``by`` is ``"manifest"`` (the corpus said so) or ``"<model id>@<version>"``. ``origin`` is set only when a
label was carried over from another input (a dropped duplicate, or a clip contained in this recording):
the uri of that input. In JSON a missing label, and an empty field, is absent, never null.

    Labels.from_dict({"transcript": {"text": "hi", "language": "en", "by": "manifest"}}).transcript.text == "hi"
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from schemas.arrow import _hints, _unwrap_optional


class LabelError(ValueError):
    """A label that does not fit its type (from a sidecar or a manifest): says which field and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Transcript:
    """What is said. Beside a manifest transcript an ASR model leaves its ``hypothesis`` and their word error
    rate (``disagreement``); the manifest text is never replaced."""

    text: str
    by: str
    language: str = ""
    language_prob: float | None = None    # the language identifier's probability
    hypothesis: str = ""
    disagreement: float | None = None
    origin: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class SpeakerTurn:
    speaker: str
    start_s: float       # seconds from the segment's start
    end_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class Speakers:
    count: int
    by: str
    turns: tuple[SpeakerTurn, ...] = ()
    embedding: tuple[float, ...] = ()     # the main speaker's voice (unit vector), for speaker-disjoint splits
    origin: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    label: str
    score: float
    by: str
    start_s: float | None = None     # seconds from the segment's start, when the labeler gives times
    end_s: float | None = None
    origin: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Music:
    by: str
    tempo_bpm: float | None = None
    key: str = ""
    instruments: tuple[str, ...] = ()
    origin: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Paralinguistic:
    by: str
    gender: str = ""
    gender_confidence: float | None = None
    emotion: str = ""
    age: str = ""
    origin: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Caption:
    text: str
    by: str
    origin: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Quality:
    by: str
    peak: float | None = None
    clipping_ratio: float | None = None
    snr_db: float | None = None
    lufs: float | None = None
    bandwidth_hz: float | None = None
    dnsmos_sig: float | None = None       # DNSMOS (P.835) of speech, by ``dnsmos_by``
    dnsmos_bak: float | None = None
    dnsmos_ovrl: float | None = None
    dnsmos_by: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Labels:
    transcript: Transcript | None = None
    speakers: Speakers | None = None
    events: tuple[Event, ...] = ()
    music: Music | None = None
    paralinguistic: Paralinguistic | None = None
    caption: Caption | None = None
    quality: Quality | None = None

    KINDS = ("transcript", "speakers", "events", "music", "paralinguistic", "caption", "quality")

    def kinds(self) -> list[str]:
        """The label kinds present: ``["transcript", "events"]``."""
        return [k for k in self.KINDS if getattr(self, k) not in (None, ())]

    def replace(self, **changes: Any) -> "Labels":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """FORMAT.md's ``labels`` object: absent labels and empty fields left out."""
        return {k: _to_json(getattr(self, k)) for k in self.kinds()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "labels") -> "Labels":
        """Parse and check a ``labels`` object; raises ``LabelError`` naming the first bad field."""
        if not isinstance(d, dict):
            raise LabelError(f"{where}: expected an object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.KINDS))
        if unknown:
            raise LabelError(f"{where}: unknown label {unknown[0]!r}; known: {', '.join(cls.KINDS)}")
        return _parse(cls, d, where)


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v not in (None, "", ()):
                out[f.name] = _to_json(v)
        return out
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def _parse(tp: Any, value: Any, where: str) -> Any:
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list):
            raise LabelError(f"{where}: expected a list, got {type(value).__name__}")
        item = typing.get_args(tp)[0]
        return tuple(_parse(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise LabelError(f"{where}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise LabelError(f"{where}: unknown field {unknown[0]!r}")
        kwargs = {k: _parse(hints[k], v, f"{where}.{k}") for k, v in value.items() if v is not None}
        try:
            return tp(**kwargs)
        except TypeError:
            missing = [f.name for f in dataclasses.fields(tp)
                       if f.default is dataclasses.MISSING and f.name not in kwargs]
            raise LabelError(f"{where}: missing field {missing[0]!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise LabelError(f"{where}: expected text, got {type(value).__name__}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LabelError(f"{where}: expected a whole number ≥ 0, got {value!r}"[:200])
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LabelError(f"{where}: expected a finite number, got {value!r}"[:200])
        return float(value)
    raise LabelError(f"{where}: unsupported type {tp}")
