"""Pass 1 over one input: decode it once, block by block, and measure what later stages need.

``probe(item, params)`` → ``Probe``: duration by decoding, content hashes, the landmark fingerprint, and a
chunk plan that cuts long files at low-energy points so pass 2 can decode and segment each chunk
independently with bounded memory. Bad media raises a ``MediaError`` subclass.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import fsspec
import numpy as np

from processors.audio import TARGET_SR, is_local, iter_standardised, local_path, to_pcm16
from processors.dedup import Fingerprinter, PcmHasher
from processors.errors import DurationMismatch, SilentAudio, TooShort, UnreadableInput
from processors.sources import InputItem

ENERGY_HOP = 160  # 10 ms
LOSSLESS = (".wav", ".flac")


@dataclasses.dataclass(frozen=True)
class ProbeParams:
    min_duration_s: float = 0.1
    duration_tolerance_s: float = 0.25
    silence_peak_dbfs: float = -70.0
    chunk_s: float = 300.0
    cut_search_s: float = 15.0
    block_s: float = 20.0


@dataclasses.dataclass(frozen=True)
class Probe:
    """What pass 1 learned about one accepted input. ``chunks`` are (start_s, end_s) pairs."""

    uri: str
    file_sha256: str
    pcm_sha256: str
    duration_s: float
    chunks: list[tuple[float, float]]
    fingerprint: np.ndarray          # (n, 2) int64
    lossless: bool

    def to_json_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["fingerprint"] = base64.b64encode(self.fingerprint.astype("<i8").tobytes()).decode()
        return d

    @classmethod
    def from_json_dict(cls, d: dict) -> "Probe":
        fp = np.frombuffer(base64.b64decode(d["fingerprint"]), dtype="<i8").reshape(-1, 2)
        return cls(**{**d, "fingerprint": fp, "chunks": [tuple(c) for c in d["chunks"]]})


def file_sha256(uri: str) -> str:
    h = hashlib.sha256()
    try:
        with (open(local_path(uri), "rb") if is_local(uri) else fsspec.open(uri, "rb").open()) as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as e:
        raise UnreadableInput(f"{type(e).__name__}: {e.strerror or e}") from None
    return h.hexdigest()


def probe(item: InputItem, p: ProbeParams, fingerprint: bool = True) -> Probe:
    """``fingerprint=False`` skips the landmark fingerprint (near-duplicate detection off)."""
    pcm_hash = PcmHasher()
    fingerprint = Fingerprinter() if fingerprint else None
    energies: list[np.ndarray] = []
    carry = np.zeros(0, np.float32)
    n, peak = 0, 0.0
    for block in iter_standardised(item.uri, block_s=p.block_s):
        n += len(block)
        peak = max(peak, float(np.max(np.abs(block))))
        pcm_hash.update(to_pcm16(block))
        if fingerprint is not None:
            fingerprint.update(block)
        buf = np.concatenate([carry, block])
        usable = len(buf) - len(buf) % ENERGY_HOP
        energies.append(np.sqrt(np.mean(buf[:usable].reshape(-1, ENERGY_HOP) ** 2, axis=1)).astype(np.float32))
        carry = buf[usable:]
    duration = n / TARGET_SR
    if duration < p.min_duration_s:
        raise TooShort(f"{duration:.3f} s < min_duration_s {p.min_duration_s}")
    if peak <= 10 ** (p.silence_peak_dbfs / 20):
        raise SilentAudio(f"peak {20 * np.log10(peak + 1e-12):.1f} dBFS ≤ {p.silence_peak_dbfs} dBFS")
    if item.duration_s >= 0 and abs(item.duration_s - duration) > p.duration_tolerance_s:
        raise DurationMismatch(f"manifest says {item.duration_s:.3f} s, decoded {duration:.3f} s "
                               f"(tolerance {p.duration_tolerance_s} s)")
    energy = np.concatenate(energies) if energies else np.zeros(0, np.float32)
    return Probe(
        uri=item.uri,
        file_sha256=file_sha256(item.uri),
        pcm_sha256=pcm_hash.hexdigest(),
        duration_s=round(duration, 6),
        chunks=plan_chunks(energy, duration, p.chunk_s, p.cut_search_s),
        fingerprint=fingerprint.finish() if fingerprint is not None else np.zeros((0, 2), np.int64),
        lossless=item.uri.lower().endswith(LOSSLESS),
    )


def plan_chunks(energy: np.ndarray, duration_s: float, chunk_s: float, search_s: float) -> list[tuple[float, float]]:
    """Cut ``[0, duration_s)`` into chunks of at most ``chunk_s``, each cut at the quietest 10 ms frame
    of the last ``search_s`` before the limit: 700 s with chunk_s=300 → 3 chunks."""
    hop_s = ENERGY_HOP / TARGET_SR
    chunks, start = [], 0.0
    while duration_s - start > chunk_s:
        lo = int((start + chunk_s - search_s) / hop_s)
        hi = int((start + chunk_s) / hop_s)
        window = energy[lo:hi]
        cut = (lo + int(np.argmin(window))) * hop_s if len(window) else start + chunk_s
        cut = round(cut, 3)
        chunks.append((round(start, 3), cut))
        start = cut
    chunks.append((round(start, 3), round(duration_s, 6)))
    return chunks
