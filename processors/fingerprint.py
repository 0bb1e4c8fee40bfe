"""Content identity of an input: sha256 of its standardised 16-bit PCM (exact copies), and a streaming
landmark fingerprint (near copies: re-encoded, resampled, gain-changed, trimmed, or contained in a longer
recording).

The fingerprint is the landmark scheme of Wang (2003, "An Industrial-Strength Audio Search Algorithm"):
spectrogram peaks, paired with their near-future peaks into (f1, f2, dt) hashes that carry the anchor's
time. Two recordings match when many shared hashes agree on one time offset, which survives trimming (a
constant offset), gain (peaks are local maxima, not levels) and codecs (strong peaks outlive mp3). Hashes
are subsampled by hash value, so both copies keep the same subset; about 59 hashes per second stay (measured
on the bench corpus; espeak speech alone keeps 46; docs/scale.md).
"""

from __future__ import annotations

import hashlib

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

    ``finish()`` → int64 array of shape (n, 2): column 0 the hash, column 1 the anchor frame. The result
    does not depend on how the audio was cut into blocks.
    """

    def __init__(self) -> None:
        self._pcm_tail = np.zeros(0, np.float32)
        self._spec: list[np.ndarray] = []           # log-power frames not yet peak-picked (+ context)
        self._spec_start = 0                        # absolute frame index of self._spec[0]
        self._peaked_upto = 0                       # peaks decided for frames < this
        self._peaks = np.zeros((0, 2), np.int64)    # (frame, bin), sorted, not yet paired
        self._hashes: list[np.ndarray] = []
        self._window = np.hanning(N_FFT).astype(np.float32)

    def update(self, x: np.ndarray) -> None:
        buf = np.concatenate([self._pcm_tail, x.astype(np.float32)])
        n = 0 if len(buf) < N_FFT else 1 + (len(buf) - N_FFT) // HOP
        if n:
            frames = np.lib.stride_tricks.sliding_window_view(buf, N_FFT)[::HOP][:n]
            power = np.abs(np.fft.rfft(frames * self._window, axis=1)) ** 2
            self._spec.extend(10 * np.log10(power / (N_FFT / 4) ** 2 + 1e-12).astype(np.float32))
        self._pcm_tail = buf[n * HOP:]
        self._pick_peaks(final=False)
        self._pair(final=False)

    def finish(self) -> np.ndarray:
        self._pick_peaks(final=True)
        self._pair(final=True)
        return np.concatenate(self._hashes) if self._hashes else np.zeros((0, 2), np.int64)

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
        found = np.stack([t + lo + self._spec_start, f], axis=1).astype(np.int64)
        self._peaks = np.concatenate([self._peaks, found])
        self._peaked_upto = decide_upto
        keep_from = max(0, self._peaked_upto - PEAK_T - self._spec_start)
        self._spec = self._spec[keep_from:]
        self._spec_start += keep_from

    def _pair(self, final: bool) -> None:
        """Pair each anchor peak with its next ``FAN_OUT`` partners (1 ≤ dt ≤ MAX_DT frames, |df| ≤ MAX_DF
        bins), in peak order. Anchors whose partners may not all be known yet wait for the next block."""
        peaks = self._peaks
        n = len(peaks)
        ready = n if final else int(np.searchsorted(peaks[:, 0], self._peaked_upto - MAX_DT, side="left"))
        if ready == 0:
            return
        t, f = peaks[:, 0], peaks[:, 1]
        found = np.zeros(ready, np.int64)
        open_ = np.ones(ready, bool)            # still looking for partners
        out_i, out_k, out_h = [], [], []
        k = 1
        while True:
            active = np.nonzero(open_)[0]
            active = active[active + k < n]
            if len(active) == 0:
                break
            dt = t[active + k] - t[active]
            beyond = dt > MAX_DT                 # dt only grows with k (peaks are sorted by time)
            open_[active[beyond]] = False
            active, dt = active[~beyond], dt[~beyond]
            df = f[active + k] - f[active]
            ok = (dt >= 1) & (np.abs(df) <= MAX_DF)
            active, dt, df = active[ok], dt[ok], df[ok]
            out_i.append(active)
            out_k.append(np.full(len(active), k))
            out_h.append((f[active] << 14) | ((df + MAX_DF) << 6) | dt)
            found[active] += 1
            open_[active[found[active] >= FAN_OUT]] = False
            k += 1
        if out_i:
            i, kk, h = np.concatenate(out_i), np.concatenate(out_k), np.concatenate(out_h)
            order = np.lexsort((kk, i))
            i, h = i[order], h[order]
            keep = keep_hash(h)
            self._hashes.append(np.stack([h[keep], t[i[keep]]], axis=1))
        self._peaks = peaks[ready:]


def keep_hash(h: np.ndarray) -> np.ndarray:
    """Subsample by the frequency pair only, so a hash and its dt±1 variants share the decision."""
    return (((h >> 6) * 2654435761) & 0xFFFFFFFF) % KEEP_ONE_IN == 0


def variants(h: np.ndarray) -> np.ndarray:
    """(n,) hashes → (n, 3): each hash with dt-1, dt, dt+1 (-1 where out of range). A sub-frame shift (a
    trim at any sample) jitters peak times by a frame, which changes dt by one."""
    dt = h & 0x3F
    base = h & ~np.int64(0x3F)
    out = np.stack([base | (dt - 1), h, base | (dt + 1)], axis=1)
    out[:, 0][dt - 1 < 1] = -1
    out[:, 2][dt + 1 > MAX_DT] = -1
    return out
