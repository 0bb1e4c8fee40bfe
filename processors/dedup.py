"""Duplicate detection: exact (sha256 of the standardised 16-bit PCM) and near (landmark fingerprints).

Near duplicates are the same recording re-encoded, resampled, gain-changed or trimmed. The fingerprint is
the landmark scheme of Wang (2003, "An Industrial-Strength Audio Search Algorithm"): spectrogram peaks,
paired with their near-future peaks into (f1, f2, dt) hashes that carry the anchor's time. Two files match
when many shared hashes agree on one time offset, which survives trimming (a constant offset), gain (peaks
are local maxima, not levels) and codecs (strong peaks outlive mp3). Hashes are subsampled by hash value,
so both copies keep the same subset and memory stays ~20 hashes per second.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict

import numpy as np

N_FFT = 512
HOP = 256               # 16 ms frames
PEAK_T = 7              # neighbourhood half-width in frames (±112 ms)
PEAK_F = 8              # neighbourhood half-width in bins (±250 Hz)
FAN_OUT = 5
MAX_DT = 63             # frames (~1 s)
MAX_DF = 63             # bins
FLOOR_DB = -70.0        # peaks below this (re full scale) are noise
KEEP_ONE_IN = 4         # hash subsampling


class PcmHasher:
    """sha256 over the int16 PCM, fed block by block."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, pcm16: np.ndarray) -> None:
        self._h.update(pcm16.astype("<i2").tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class Fingerprinter:
    """Streaming landmark fingerprint. ``update(block)`` with 16 kHz float32 blocks, then ``finish()``.

    ``finish()`` → int64 array of shape (n, 2): column 0 the hash, column 1 the anchor frame.
    """

    def __init__(self) -> None:
        self._pcm_tail = np.zeros(0, np.float32)
        self._spec: list[np.ndarray] = []       # log-power frames not yet peak-picked (+ context)
        self._spec_start = 0                    # absolute frame index of self._spec[0]
        self._peaked_upto = 0                   # peaks decided for frames < this
        self._peaks: list[tuple[int, int]] = [] # (frame, bin), not yet paired
        self._hashes: list[tuple[int, int]] = []
        self._window = np.hanning(N_FFT).astype(np.float32)

    def update(self, x: np.ndarray) -> None:
        buf = np.concatenate([self._pcm_tail, x.astype(np.float32)])
        n = 0 if len(buf) < N_FFT else 1 + (len(buf) - N_FFT) // HOP
        if n:
            idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
            power = np.abs(np.fft.rfft(buf[idx] * self._window, axis=1)) ** 2
            self._spec.extend(10 * np.log10(power / (N_FFT / 4) ** 2 + 1e-12).astype(np.float32))
        self._pcm_tail = buf[n * HOP:]
        self._pick_peaks(final=False)
        self._pair(final=False)

    def finish(self) -> np.ndarray:
        self._pick_peaks(final=True)
        self._pair(final=True)
        if not self._hashes:
            return np.zeros((0, 2), np.int64)
        return np.array(self._hashes, np.int64)

    def _pick_peaks(self, final: bool) -> None:
        if not self._spec:
            return
        spec = np.stack(self._spec)                       # (frames, bins), from self._spec_start
        total = self._spec_start + len(spec)
        decide_upto = total if final else total - PEAK_T
        if decide_upto <= self._peaked_upto:
            return
        from scipy.ndimage import maximum_filter

        local_max = maximum_filter(spec, size=(2 * PEAK_T + 1, 2 * PEAK_F + 1), mode="constant", cval=-1e9)
        is_peak = (spec == local_max) & (spec > FLOOR_DB)
        is_peak[:, :2] = False
        lo, hi = self._peaked_upto - self._spec_start, decide_upto - self._spec_start
        t, f = np.nonzero(is_peak[lo:hi])
        self._peaks.extend(zip((t + lo + self._spec_start).tolist(), f.tolist()))
        self._peaked_upto = decide_upto
        keep_from = max(0, self._peaked_upto - PEAK_T - self._spec_start)
        self._spec = self._spec[keep_from:]
        self._spec_start += keep_from

    def _pair(self, final: bool) -> None:
        peaks = self._peaks
        done = 0
        for i, (t1, f1) in enumerate(peaks):
            if not final and t1 + MAX_DT >= self._peaked_upto:
                break
            fanned = 0
            for t2, f2 in peaks[i + 1:]:
                dt = t2 - t1
                if dt > MAX_DT:
                    break
                if dt < 1 or abs(f2 - f1) > MAX_DF:
                    continue
                h = (f1 << 14) | ((f2 - f1 + MAX_DF) << 6) | dt
                if _keep(h):
                    self._hashes.append((h, t1))
                fanned += 1
                if fanned == FAN_OUT:
                    break
            done = i + 1
        self._peaks = peaks[done:]


def _keep(h: int) -> bool:
    return ((h * 2654435761) & 0xFFFFFFFF) % KEEP_ONE_IN == 0


@dataclasses.dataclass(frozen=True)
class DedupItem:
    """One accepted input as dedup sees it. ``rank`` orders the copies: the lowest is kept."""

    uri: str
    pcm_sha256: str
    fingerprint: np.ndarray      # (n, 2) int64: hash, anchor frame
    rank: tuple


@dataclasses.dataclass(frozen=True)
class NearParams:
    min_matches: int = 12        # aligned shared hashes, absolute
    min_fraction: float = 0.2    # of the smaller fingerprint
    offset_tolerance: int = 2    # frames


def find_duplicates(items: list[DedupItem], near: NearParams | None = NearParams()) -> dict[str, tuple[str, str]]:
    """Map each duplicate's uri to (kept uri, "exact" | "near"). Keepers never appear as keys.

    Deterministic: items are visited by rank; each one is compared with the keepers so far.
    """
    order = sorted(items, key=lambda it: it.rank)
    dups: dict[str, tuple[str, str]] = {}
    by_hash: dict[str, str] = {}
    index: dict[int, list[tuple[int, int]]] = defaultdict(list)   # hash → [(keeper no., frame)]
    keepers: list[DedupItem] = []
    for it in order:
        if it.pcm_sha256 in by_hash:
            dups[it.uri] = (by_hash[it.pcm_sha256], "exact")
            continue
        match = _near_match(it, index, keepers, near) if near is not None else None
        if match is not None:
            dups[it.uri] = (match, "near")
            continue
        by_hash[it.pcm_sha256] = it.uri
        k = len(keepers)
        keepers.append(it)
        for h, t in it.fingerprint.tolist():
            index[h].append((k, t))
    return dups


def _near_match(it: DedupItem, index: dict, keepers: list[DedupItem], p: NearParams) -> str | None:
    if len(it.fingerprint) == 0:
        return None
    votes: dict[tuple[int, int], int] = defaultdict(int)
    tol = max(1, p.offset_tolerance)
    for h, t in it.fingerprint.tolist():
        for k, tk in index.get(h, ()):
            votes[(k, (tk - t) // tol)] += 1
    best: dict[int, int] = defaultdict(int)
    for (k, off), n in votes.items():
        aligned = n + votes.get((k, off + 1), 0)
        best[k] = max(best[k], aligned)
    for k in sorted(best, key=lambda k: (-best[k], k)):
        smaller = min(len(it.fingerprint), len(keepers[k].fingerprint))
        if best[k] >= max(p.min_matches, p.min_fraction * smaller):
            return keepers[k].uri
        break
    return None
