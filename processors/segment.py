"""Segment planning and cutting for one chunk of standardised audio.

``plan_chunk`` is pure: VAD probabilities and frame energies in, ≤ 30 s segment plans out. Speech comes
from VAD regions; the non-speech rest (music, sounds) is cut into ≤ 30 s windows at low-energy points;
digital or near silence is dropped. ``cut_chunk`` turns plans into ``Segment`` records and FLAC bytes.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from processors.audio import TARGET_SR, encode_flac
from processors.measure import MEASURE_BY, frame_rms, measure
from processors.vad import FRAME, VadParams, plan_speech, speech_regions
from schemas.input import InputItem
from schemas.labels import Event, Labels, Quality, SpeakerTurn, Speakers, Transcript
from schemas.segment import Segment, Source, segment_id
ENERGY_HOP = 160


@dataclasses.dataclass(frozen=True)
class SegmentParams:
    """Settings of segment planning beyond VAD's (``VadParams``)."""

    min_segment_s: float = 0.3
    min_nonspeech_s: float = 0.25
    silence_dbfs: float = -55.0
    whole_utterances: bool = True


@dataclasses.dataclass(frozen=True)
class PlannedSegment:
    start: int          # samples, chunk-relative
    end: int
    kind: str
    speech_ratio: float
    whole_utterance: bool = False


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-12)) if len(x) else -120.0


def _speech_ratio(probs: np.ndarray, start: int, end: int, threshold: float) -> float:
    p = probs[start // FRAME: max(start // FRAME + 1, -(-end // FRAME))]
    return round(float(np.mean(p >= threshold)), 3) if len(p) else 0.0


def split_at_low_energy(start: int, end: int, energy: np.ndarray, max_len: int, hop: int = ENERGY_HOP) -> list[tuple[int, int]]:
    """Cut [start, end) samples into pieces ≤ ``max_len``, each cut at the quietest 10 ms frame of the
    second half of the allowed span."""
    pieces = []
    while end - start > max_len:
        lo, hi = (start + max_len // 2) // hop, (start + max_len) // hop
        window = energy[lo:hi]
        cut = (lo + int(np.argmin(window))) * hop if len(window) else start + max_len
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def plan_chunk(x: np.ndarray, probs: np.ndarray, item: InputItem, single_chunk: bool, p: SegmentParams,
               vad: VadParams = VadParams()) -> list[PlannedSegment]:
    n = len(x)
    max_len = int(vad.max_segment_s * TARGET_SR)
    min_len = int(p.min_segment_s * TARGET_SR)
    speech_kind = "mixed" if item.kind in ("music", "sound") else "speech"
    energy = frame_rms(x, ENERGY_HOP, ENERGY_HOP)

    if p.whole_utterances and single_chunk and has_utterance_labels(item) and n <= max_len:
        return [_whole_utterance(x, probs, vad, speech_kind)]

    speech = [(s * FRAME, min(n, e * FRAME)) for s, e in plan_speech(probs, vad)]
    plans = [PlannedSegment(s, e, speech_kind, _speech_ratio(probs, s, e, vad.threshold))
             for s, e in speech if e - s >= min_len]
    if item.kind != "speech":
        plans += _nonspeech(x, probs, speech, energy, item, p, vad)
    elif not plans and _rms_db(x) > p.silence_dbfs:
        # A speech corpus whose clip VAD missed (a short word): keep it whole, the corpus says speech.
        plans = [PlannedSegment(0, min(n, max_len), "speech", _speech_ratio(probs, 0, n, vad.threshold))]
    return sorted(plans, key=lambda s: s.start)


def has_utterance_labels(item: InputItem) -> bool:
    """Whether the source labels the input as one utterance (a transcript, a speaker, sidecar labels):
    such an input short enough for one segment is kept whole, so its labels stay true of the segment."""
    return bool(item.text or item.speaker or item.labels.kinds())


def _whole_utterance(x, probs, vad: VadParams, kind: str) -> PlannedSegment:
    raw = speech_regions(probs, vad.threshold, vad.neg_threshold, 1, 1)
    pad = int(vad.pad_s * TARGET_SR)
    start = max(0, raw[0][0] * FRAME - pad) if raw else 0
    end = min(len(x), raw[-1][1] * FRAME + pad) if raw else len(x)
    return PlannedSegment(start, end, kind, _speech_ratio(probs, start, end, vad.threshold), whole_utterance=True)


def _nonspeech(x, probs, speech, energy, item, p: SegmentParams, vad: VadParams) -> list[PlannedSegment]:
    kind = item.kind if item.kind in ("music", "sound", "mixed") else "sound"
    max_len = int(vad.max_segment_s * TARGET_SR)
    gaps, pos = [], 0
    for s, e in speech + [(len(x), len(x))]:
        if s - pos >= int(p.min_nonspeech_s * TARGET_SR):
            gaps.append((pos, s))
        pos = max(pos, e)
    plans = []
    for g0, g1 in gaps:
        for s, e in split_at_low_energy(g0, g1, energy, max_len):
            s, e = _trim_silence(x, s, e, p.silence_dbfs)
            if e - s >= int(p.min_nonspeech_s * TARGET_SR) and _rms_db(x[s:e]) > p.silence_dbfs:
                plans.append(PlannedSegment(s, e, kind, _speech_ratio(probs, s, e, vad.threshold)))
    return plans


def _trim_silence(x: np.ndarray, s: int, e: int, silence_dbfs: float) -> tuple[int, int]:
    """Drop silent 10 ms frames at both ends of [s, e)."""
    level = 10 ** (silence_dbfs / 20)
    rms = frame_rms(x[s:e], ENERGY_HOP, ENERGY_HOP)
    loud = np.nonzero(rms > level)[0]
    if not len(loud):
        return s, s
    return s + int(loud[0]) * ENERGY_HOP, min(e, s + (int(loud[-1]) + 1) * ENERGY_HOP)


def cut_chunk(x: np.ndarray, plans: list[PlannedSegment], item: InputItem, file_sha256: str,
              chunk_start_s: float) -> list[tuple[Segment, bytes]]:
    """Plans → (Segment, FLAC bytes), in time order. Times are source-file seconds (3 decimals)."""
    source = Source(corpus=item.corpus, uri=item.uri, sha256=file_sha256, license=item.license, split=item.split)
    base_extra = json.loads(item.extra_json) if item.extra_json else {}
    out = []
    for plan in plans:
        audio = x[plan.start:plan.end]
        start_s = round(chunk_start_s + plan.start / TARGET_SR, 3)
        end_s = round(start_s + len(audio) / TARGET_SR, 3)
        labels = source_labels(item, plan.kind, plan.whole_utterance, round(len(audio) / TARGET_SR, 3))
        labels = labels.replace(quality=Quality(by=MEASURE_BY, **measure(audio)))
        extra = {**base_extra, "speech_ratio": plan.speech_ratio}
        if item.label and plan.kind == "speech":
            extra["label"] = item.label
        seg = Segment(id=segment_id(file_sha256, start_s, end_s), source=source, start_s=start_s,
                      end_s=end_s, kind=plan.kind, labels=labels, extra=extra)
        out.append((seg, encode_flac(audio)))
    return out


def source_labels(item: InputItem, kind: str, whole_utterance: bool, duration_s: float) -> Labels:
    """The labels the source gives a segment: a manifest class label on every non-speech segment; the
    transcript, speaker and sidecar labels only on a segment that covers the whole utterance."""
    labels = Labels()
    if whole_utterance:
        labels = item.labels
        if item.text:
            labels = labels.replace(transcript=Transcript(text=item.text, language=item.language, by="manifest"))
        if item.speaker and labels.speakers is None:
            turn = SpeakerTurn(speaker=item.speaker, start_s=0.0, end_s=duration_s)
            labels = labels.replace(speakers=Speakers(count=1, turns=(turn,), by="manifest"))
    if item.label and kind != "speech" and not labels.events:
        labels = labels.replace(events=(Event(label=item.label, score=1.0, by="manifest"),))
    return labels
