"""Test audio with known content: TTS speech (espeak-ng), tones, noise, silence, re-encodings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from processors.tts import SR, espeak as tts  # noqa: F401  (re-exported for the tests)


def tone(seconds: float, freq: float = 440.0, amp: float = 0.3, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chord_music(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic notes with envelopes: a stand-in for music with low-energy gaps between notes."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SR), np.float32)
    pos = 0
    while pos < len(out):
        n = int(rng.uniform(0.3, 0.8) * SR)
        f = 220 * 2 ** (rng.integers(0, 12) / 12)
        t = np.arange(n) / SR
        note = sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3)) * np.exp(-3 * t)
        out[pos:pos + n] += 0.2 * note[: len(out) - pos].astype(np.float32)
        pos += n
    return out


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def write(path: Path, x: np.ndarray, sr: int = SR, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype=subtype)
    return path


def ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(src), *args, str(dst)], check=True)
    return dst
