"""Speech with known text, voice and language from espeak-ng (test audio and the demos)."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import soundfile as sf
import soxr

SR = 16000


def espeak(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono float32 (``voice``: a language code with an optional ``+variant``)."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", "--", text],
                         check=True, capture_output=True).stdout
    x, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(x, sr, SR).astype(np.float32)
