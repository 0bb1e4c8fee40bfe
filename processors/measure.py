"""Acoustic measurements of a segment: peak, clipping, loudness (LUFS), SNR estimate, bandwidth."""

from __future__ import annotations

import functools

import numpy as np

SR = 16000
MEASURE_BY = "audiomill.measure@1"
_CLIP_LEVEL = 0.999
_FRAME = 400   # 25 ms
_HOP = 160     # 10 ms


def frame_rms(x: np.ndarray, frame: int = _FRAME, hop: int = _HOP) -> np.ndarray:
    """RMS per ``hop``-spaced frame: len(x)=16000 → 98 frames at the defaults."""
    if len(x) < frame:
        return np.array([np.sqrt(np.mean(x.astype(np.float64) ** 2))]) if len(x) else np.zeros(1)
    n = 1 + (len(x) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    return np.sqrt(np.mean(x[idx].astype(np.float64) ** 2, axis=1))


def snr_db(x: np.ndarray) -> float:
    """Energy-distribution SNR: loud frames (95th percentile) over the noise floor (10th percentile)."""
    power = frame_rms(x) ** 2 + 1e-12
    return float(10 * np.log10(np.percentile(power, 95) / np.percentile(power, 10)))


def bandwidth_hz(x: np.ndarray, drop_db: float = 50.0) -> float:
    """Highest frequency whose long-term power is within ``drop_db`` of the spectrum's peak."""
    n_fft = 1024
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    n = 1 + (len(x) - n_fft) // 512
    idx = np.arange(n_fft)[None, :] + 512 * np.arange(min(n, 2000))[:, None]
    spec = np.mean(np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft), axis=1)) ** 2, axis=0) + 1e-20
    db = 10 * np.log10(spec / spec.max())
    above = np.nonzero(db > -drop_db)[0]
    return float(above[-1] * SR / n_fft) if len(above) else 0.0


@functools.cache
def _meter():
    """One pyloudnorm meter per process: building it designs the K-weighting filters each time."""
    import pyloudnorm

    return pyloudnorm.Meter(SR)


def lufs(x: np.ndarray) -> float | None:
    """Integrated loudness (ITU-R BS.1770 via pyloudnorm); None when too short or gated out."""
    if len(x) < int(0.4 * SR):
        return None
    value = _meter().integrated_loudness(x.astype(np.float64))
    return float(value) if np.isfinite(value) else None


def measure(x: np.ndarray) -> dict[str, float]:
    """All measurements for one segment, rounded for stable JSON; an unmeasurable value is left out."""
    out = {
        "peak": round(float(np.max(np.abs(x))) if len(x) else 0.0, 4),
        "clipping_ratio": round(float(np.mean(np.abs(x) >= _CLIP_LEVEL)) if len(x) else 0.0, 6),
        "snr_db": round(snr_db(x), 2),
        "bandwidth_hz": round(bandwidth_hz(x), 1),
    }
    loudness = lufs(x)
    if loudness is not None:
        out["lufs"] = round(loudness, 2)
    return out
