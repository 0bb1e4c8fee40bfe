"""One pass over one input: decode it once, block by block, and do everything the input needs on the way.

    decode → PCM hash + fingerprint → chunk at quiet points → VAD → plan + cut → measure → FLAC → part tar

``ingest(item, params, vad, sink)`` → ``UnitResult``. Memory stays bounded by one chunk (``chunk_s``, 300 s
by default) whatever the file's length; the whole-file checks (too short, silent, a manifest duration that
disagrees) run when decoding ends, and raise a ``MediaError`` like any bad media.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import fsspec
import numpy as np

from processors.audio import TARGET_SR, DecodeInfo, DecodeLimits, check_regular_file, is_local, iter_standardised, \
    local_path, to_pcm16
from processors.fingerprint import Fingerprinter, PcmHasher
from processors.errors import DurationMismatch, SilentAudio, TooShort, UnreadableInput
from processors.segment import SegmentParams, cut_chunk, has_utterance_labels, plan_chunk
from processors.shards import TarSink
from processors.vad import VadParams
from schemas.input import InputItem
from schemas.unit import SegmentRef, UnitResult, pack_fingerprint

ENERGY_HOP = 160          # 10 ms
ACTIVE_RMS = 1e-3         # -60 dBFS: frames above it count towards the input's level


@dataclasses.dataclass(frozen=True)
class AudioParams:
    """Decoding, the whole-input checks and chunking (config section ``audio``)."""

    min_duration_s: float = 0.1
    duration_tolerance_s: float = 0.25
    silence_peak_dbfs: float = -70.0
    chunk_s: float = 300.0
    cut_search_s: float = 15.0
    block_s: float = 20.0
    min_sample_rate: int = 4000
    max_sample_rate: int = 768000
    max_channels: int = 256
    stall_timeout_s: float = 60.0

    def limits(self) -> DecodeLimits:
        return DecodeLimits(self.min_sample_rate, self.max_sample_rate, self.max_channels, self.stall_timeout_s)


@dataclasses.dataclass(frozen=True)
class IngestParams:
    audio: AudioParams = AudioParams()
    segment: SegmentParams = SegmentParams()
    vad: VadParams = VadParams()
    fingerprint: bool = True


class Chunker:
    """Cuts a stream of 16 kHz blocks into chunks of at most ``chunk_s``: each cut falls at the quietest
    10 ms frame of the last ``search_s`` before the limit, decided as soon as audio past the limit exists,
    so a 700 s stream with chunk_s=300 gives 3 chunks. Yields (first sample, samples)."""

    def __init__(self, chunk_s: float, search_s: float):
        self.limit = int(chunk_s * TARGET_SR) // ENERGY_HOP * ENERGY_HOP
        self.search = min(int(search_s * TARGET_SR), self.limit) // ENERGY_HOP * ENERGY_HOP
        self.blocks: list[np.ndarray] = []
        self.buffered = 0
        self.start = 0                       # file sample of the buffer's first sample
        self.energy: list[np.ndarray] = []   # 10 ms RMS frames of the buffer, from its start
        self.tail = np.zeros(0, np.float32)  # samples not yet in a whole energy frame
        self.emitted = 0

    def push(self, block: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        self.blocks.append(block)
        self.buffered += len(block)
        buf = np.concatenate([self.tail, block])
        usable = len(buf) - len(buf) % ENERGY_HOP
        self.energy.append(np.sqrt(np.mean(buf[:usable].reshape(-1, ENERGY_HOP) ** 2, axis=1)))
        self.tail = buf[usable:]
        while self.buffered > self.limit:
            yield self._cut()

    def finish(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.buffered:
            x = np.concatenate(self.blocks)
            self.blocks, self.buffered = [], 0
            self.emitted += 1
            yield self.start, x

    def _cut(self) -> tuple[int, np.ndarray]:
        energy = np.concatenate(self.energy)
        lo, hi = (self.limit - self.search) // ENERGY_HOP, self.limit // ENERGY_HOP
        frame = lo + int(np.argmin(energy[lo:hi])) if hi > lo else hi
        cut = max(ENERGY_HOP, frame * ENERGY_HOP)
        x = np.concatenate(self.blocks)
        chunk, rest = x[:cut], x[cut:]
        start = self.start
        self.blocks, self.buffered, self.start = [rest], len(rest), start + cut
        self.energy = [energy[cut // ENERGY_HOP:]]
        self.emitted += 1
        return start, chunk


class LevelMeter:
    """The input's active level: mean power of its 10 ms frames above -60 dBFS, in dBFS."""

    def __init__(self) -> None:
        self.power, self.frames = 0.0, 0
        self.tail = np.zeros(0, np.float32)

    def update(self, block: np.ndarray) -> None:
        buf = np.concatenate([self.tail, block])
        usable = len(buf) - len(buf) % ENERGY_HOP
        p = np.mean(buf[:usable].reshape(-1, ENERGY_HOP).astype(np.float64) ** 2, axis=1)
        active = p[p > ACTIVE_RMS ** 2]
        self.power += float(active.sum())
        self.frames += len(active)
        self.tail = buf[usable:]

    def dbfs(self) -> float:
        return round(10 * np.log10(self.power / self.frames), 2) if self.frames else -120.0


def file_sha256(uri: str) -> str:
    h = hashlib.sha256()
    try:
        if is_local(uri):
            check_regular_file(local_path(uri))
        with (open(local_path(uri), "rb") if is_local(uri) else fsspec.open(uri, "rb").open()) as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as e:
        raise UnreadableInput(f"{type(e).__name__}: {e.strerror or e}") from None
    return h.hexdigest()


def ingest(item: InputItem, p: IngestParams, vad, sink: TarSink) -> UnitResult:
    """Decode ``item`` once and write its segments to ``sink``; ``vad`` has ``probs(x)`` (``SileroVad``).

    Raises a ``MediaError`` for bad media; the segments already written to ``sink`` are then void.
    """
    source_sha = file_sha256(item.path)
    info, hasher, level = DecodeInfo(), PcmHasher(), LevelMeter()
    fingerprint = Fingerprinter() if p.fingerprint else None
    chunker = Chunker(p.audio.chunk_s, p.audio.cut_search_s)
    refs: list[SegmentRef] = []
    n, peak = 0, 0.0

    def segment(start: int, x: np.ndarray, single: bool) -> None:
        plans = plan_chunk(x, vad.probs(x), item, single, p.segment, p.vad)
        for plan, (seg, flac) in zip(plans, cut_chunk(x, plans, item, source_sha, start / TARGET_SR)):
            w = sink.add(seg.id, [("json", seg.to_json().encode()), ("flac", flac)])
            refs.append(SegmentRef(key=seg.id, start_s=seg.start_s, end_s=seg.end_s, kind=seg.kind, offset=w.offset,
                                   size=w.size, whole_utterance=plan.whole_utterance,
                                   labels=seg.labels))
            bandwidths.append(seg.labels.quality.bandwidth_hz)

    bandwidths: list[float] = []
    for block in iter_standardised(item.path, block_s=p.audio.block_s, limits=p.audio.limits(), info=info):
        n += len(block)
        peak = max(peak, float(np.max(np.abs(block)))) if len(block) else peak
        hasher.update(to_pcm16(block))
        level.update(block)
        if fingerprint is not None:
            fingerprint.update(block)
        for start, x in chunker.push(block):
            segment(start, x, single=False)
    for start, x in chunker.finish():
        segment(start, x, single=chunker.emitted == 1)
    duration = n / TARGET_SR
    _check_whole(item, p, duration, peak)
    warnings = []
    if has_utterance_labels(item) and not any(r.whole_utterance for r in refs):
        warnings.append(f"labels_not_placed: the input ({duration:.1f} s) is longer than one segment, so its "
                        "transcript, speaker and sidecar labels fit no single segment")
    return UnitResult(
        unit=item.unit, uri=item.uri, file_sha256=source_sha, pcm_sha256=hasher.hexdigest(),
        duration_s=round(duration, 6), codec=info.codec, lossless=info.lossless,
        native_sample_rate=info.sample_rate, bandwidth_hz=max(bandwidths, default=0.0), level_dbfs=level.dbfs(),
        label_count=item.label_count(), class_label=item.label,
        fingerprint=pack_fingerprint(fingerprint.finish()) if fingerprint is not None else b"",
        segments=tuple(refs), warnings=tuple(warnings),
    )


def _check_whole(item: InputItem, p: IngestParams, duration: float, peak: float) -> None:
    a = p.audio
    if duration < a.min_duration_s:
        raise TooShort(f"{duration:.3f} s < audio.min_duration_s {a.min_duration_s}")
    if peak <= 10 ** (a.silence_peak_dbfs / 20):
        raise SilentAudio(f"peak {20 * np.log10(peak + 1e-12):.1f} dBFS ≤ audio.silence_peak_dbfs {a.silence_peak_dbfs}")
    if item.duration_s >= 0 and abs(item.duration_s - duration) > a.duration_tolerance_s:
        raise DurationMismatch(f"manifest says {item.duration_s:.3f} s, decoded {duration:.3f} s "
                               f"(tolerance {a.duration_tolerance_s} s)")
