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
from processors.measure import frame_rms, measure
from processors.sources import InputItem
from processors.vad import FRAME, VadParams, plan_speech, speech_regions
from schemas.segment import Segment, Source, segment_id

LABEL_KEYS = ("transcript", "speakers", "events", "music", "paralinguistic", "caption", "quality")
MEASURE_BY = "audiomill.measure@1"
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

    if p.whole_utterances and single_chunk and item.text and n <= max_len:
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
    out = []
    for plan in plans:
        audio = x[plan.start:plan.end]
        start_s = round(chunk_start_s + plan.start / TARGET_SR, 3)
        end_s = round(start_s + len(audio) / TARGET_SR, 3)
        labels = _labels(item, plan, audio)
        extra = {"speech_ratio": plan.speech_ratio}
        source_labels = json.loads(item.labels_json) if item.labels_json else {}
        for key, value in source_labels.items():
            if key in LABEL_KEYS and plan.whole_utterance:
                labels.setdefault(key, value)
            elif key not in LABEL_KEYS:
                extra[key] = value
        if item.label and plan.kind == "speech":
            extra["label"] = item.label
        seg = Segment(id=segment_id(file_sha256, start_s, end_s), source=source, start_s=start_s,
                      end_s=end_s, kind=plan.kind, labels=labels, extra=extra)
        out.append((seg, encode_flac(audio)))
    return out


def _labels(item: InputItem, plan: PlannedSegment, audio: np.ndarray) -> dict:
    labels: dict = {"quality": {**measure(audio), "by": MEASURE_BY}}
    if plan.whole_utterance and item.text:
        t = {"text": item.text, "by": "manifest"}
        if item.language:
            t["language"] = item.language
        labels["transcript"] = t
        if item.speaker:
            dur = round(len(audio) / TARGET_SR, 3)
            labels["speakers"] = {"count": 1, "turns": [{"speaker": item.speaker, "start_s": 0.0, "end_s": dur}],
                                  "by": "manifest"}
    if item.label and plan.kind != "speech":
        labels["events"] = [{"label": item.label, "score": 1.0, "by": "manifest"}]
    return labels
