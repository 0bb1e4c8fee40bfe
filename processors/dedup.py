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
from collections.abc import Callable, Iterable

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
COVERAGE_BIN = 48       # frames (0.768 s)


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
    """Subsample by the frequency pair only, so a hash and its dt±1 variants share the decision."""
    return (((h >> 6) * 2654435761) & 0xFFFFFFFF) % KEEP_ONE_IN == 0


def _variants(h: int) -> tuple[int, ...]:
    """``h`` and its dt±1 neighbours: a sub-frame shift (a trim at any sample) jitters peak times by a
    frame, which changes dt by one."""
    dt = h & 0x3F
    return tuple((h & ~0x3F) | d for d in (dt - 1, dt, dt + 1) if 1 <= d <= MAX_DT)


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
    min_coverage: float = 0.9    # of the ~0.77 s bins of the overlap holding an aligned match


Verifier = Callable[[str, str, int], bool]


def find_duplicates(items: list[DedupItem], near: NearParams | None = NearParams(),
                    verify: Verifier | None = None) -> dict[str, tuple[str, str]]:
    """Map each duplicate's uri to (kept uri, "exact" | "near"). Keepers never appear as keys.

    Deterministic: items are visited by rank; each one is compared with the keepers so far. A near
    candidate is confirmed by ``verify(uri, kept uri, offset in frames)`` when one is given.
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
        match = _near_match(it, index, keepers, near, verify) if near is not None else None
        if match is not None:
            dups[it.uri] = (match, "near")
            continue
        by_hash[it.pcm_sha256] = it.uri
        k = len(keepers)
        keepers.append(it)
        for h, t in it.fingerprint.tolist():
            index[h].append((k, t))
    return dups


def _near_match(it: DedupItem, index: dict, keepers: list[DedupItem], p: NearParams,
                verify: Verifier | None) -> str | None:
    if len(it.fingerprint) == 0:
        return None
    tol = max(1, p.offset_tolerance)
    votes: dict[tuple[int, int], int] = defaultdict(int)
    for h, t in it.fingerprint.tolist():
        for k, tk in {m for v in _variants(h) for m in index.get(v, ())}:
            votes[(k, (tk - t) // tol)] += 1
    best: dict[int, tuple[int, int]] = {}
    for (k, off), n in votes.items():
        aligned = n + votes.get((k, off + 1), 0)
        if aligned > best.get(k, (0, 0))[0]:
            best[k] = (aligned, off)
    for k in sorted(best, key=lambda k: (-best[k][0], k)):
        aligned, off = best[k]
        keeper = keepers[k]
        smaller = min(len(it.fingerprint), len(keeper.fingerprint))
        if aligned < max(p.min_matches, p.min_fraction * smaller):
            return None
        if coverage(it.fingerprint, keeper.fingerprint, off, tol) >= p.min_coverage:
            if verify is None or verify(it.uri, keeper.uri, off * tol):
                return keeper.uri
    return None


def coverage(fp: np.ndarray, keeper_fp: np.ndarray, offset_bin: int, tol: int) -> float:
    """Share of ``fp``'s time bins (~0.77 s), within the span both files cover at this offset, that hold
    an aligned match: a cheap first check that the match spans the file, before ``SpectralVerifier``."""
    keeper_at = defaultdict(set)
    for h, t in keeper_fp.tolist():
        keeper_at[h].add(t)
    lo_t, hi_t = int(keeper_fp[:, 1].min()), int(keeper_fp[:, 1].max())
    bins_all, bins_hit = set(), set()
    for h, t in fp.tolist():
        shift_lo = offset_bin * tol
        if not lo_t <= t + shift_lo <= hi_t:
            continue
        b = t // COVERAGE_BIN
        bins_all.add(b)
        if any((t + shift_lo + d) in keeper_at.get(v, ()) for v in _variants(h) for d in range(0, 2 * tol)):
            bins_hit.add(b)
    return len(bins_hit) / len(bins_all) if bins_all else 0.0


@dataclasses.dataclass(frozen=True)
class SpectralVerifier:
    """Confirms a near-duplicate candidate on the audio itself: both files are decoded, aligned to the
    sample (the fingerprint offset refined by cross-correlation), and compared band by band in 64 ms
    windows after removing the gain difference. A copy differs by codec noise everywhere (a few dB);
    two renderings of a template sentence (TTS renders the shared words identically) differ by
    ≥ 10 dB over the differing word. ``decode(uri)`` yields 16 kHz float32 blocks."""

    decode: Callable[[str], Iterable[np.ndarray]]
    max_seconds: float = 600.0
    max_median_db: float = 3.0       # typical window distance of a copy
    loud_window_db: float = 8.0      # a window this far off is different audio …
    max_loud_windows: int = 2        # … and more than two such windows (128 ms) mean different content

    def __call__(self, uri: str, kept_uri: str, offset_frames: int) -> bool:
        a, b = self._load(uri), self._load(kept_uri)
        if min(len(a), len(b)) < N_FFT * 4:
            return False
        lag = _refine_lag(a, b, offset_frames * HOP)
        distances = _window_distances(a, b, lag)
        if len(distances) == 0:
            return False
        return (float(np.median(distances)) <= self.max_median_db
                and int(np.sum(distances > self.loud_window_db)) <= self.max_loud_windows)

    def _load(self, uri: str) -> np.ndarray:
        blocks, n = [], 0
        for block in self.decode(uri):
            blocks.append(block)
            n += len(block)
            if n >= self.max_seconds * 16000:
                break
        return np.concatenate(blocks)[: int(self.max_seconds * 16000)] if blocks else np.zeros(0, np.float32)


def _refine_lag(a: np.ndarray, b: np.ndarray, guess: int, search: int = 1536, span: int = 160000) -> int:
    """Sample lag L with a[t] ≈ b[t + L], searched within ``guess ± search`` by cross-correlating up to
    10 s of ``a`` against ``b``."""
    a0 = max(0, -guess + search)
    seg = a[a0:a0 + span]
    lo = a0 + guess - search
    ref = b[max(0, lo):max(0, lo) + len(seg) + 2 * search]
    if len(seg) < N_FFT or len(ref) < len(seg):
        return guess
    n = 1 << int(np.ceil(np.log2(len(ref) + len(seg))))
    corr = np.fft.irfft(np.fft.rfft(ref, n) * np.conj(np.fft.rfft(seg, n)), n)[: len(ref) - len(seg) + 1]
    return max(0, lo) + int(np.argmax(corr)) - a0


_BAND_EDGES = np.geomspace(80, 7600, 33)
_BAND_OF_BIN = np.digitize(np.fft.rfftfreq(N_FFT, 1 / 16000), _BAND_EDGES) - 1


def _band_db(x: np.ndarray, hop: int = 128) -> np.ndarray:
    n = 1 + (len(x) - N_FFT) // hop
    idx = np.arange(N_FFT)[None, :] + hop * np.arange(n)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * np.hanning(N_FFT), axis=1)) ** 2
    bands = np.stack([power[:, _BAND_OF_BIN == k].sum(axis=1) for k in range(32)], axis=1)
    return 10 * np.log10(bands + 1e-10)


def _window_distances(a: np.ndarray, b: np.ndarray, lag: int, window: int = 8) -> np.ndarray:
    """Mean |band dB difference| (gain removed) per 8-frame (64 ms) window of loud aligned frames."""
    start = max(0, -lag)
    end = min(len(a), len(b) - lag)
    if end - start < N_FFT * 2:
        return np.zeros(0)
    A, B = _band_db(a[start:end]), _band_db(b[start + lag:end + lag])
    level = np.maximum(A.mean(axis=1), B.mean(axis=1))
    loud = level > level.max() - 35
    diff = A - B
    gain = np.median(diff[loud])
    dist = np.abs(diff - gain).mean(axis=1)
    out = []
    for i in range(0, len(dist) - window + 1, window):
        sel = loud[i:i + window]
        if sel.any():
            out.append(dist[i:i + window][sel].mean())
    return np.array(out)
