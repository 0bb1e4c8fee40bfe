"""Test audio with known content: TTS speech (espeak-ng), tones, noise, silence, re-encodings."""

from __future__ import annotations

import filecmp
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


def tiny_checkpoint(folder: Path, texts: list[str], vocab_size: int = 400):
    """A random Qwen2-Audio of the tiny preset as audiomill train exports it (save_pretrained, with its
    processor and a tokenizer trained on ``texts``); returns the tokenizer."""
    from trainer.model import PRESETS, build_model, build_processor, train_tokenizer

    tok = train_tokenizer(texts, vocab_size=vocab_size)
    preset = PRESETS["tiny"]
    build_model(preset, tok).save_pretrained(folder)
    build_processor(tok, preset.chunk_s, preset.num_mel_bins).save_pretrained(folder)
    return tok


def tiny_text_lm(folder: Path, vocab_size: int):
    """A random one-layer text-only Qwen2 causal LM, saved with save_pretrained; returns the model."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    lm.save_pretrained(folder)
    return lm


def assert_same_tree(a: Path, b: Path, ignore=frozenset()):
    """The two folders hold the same names and byte-identical files, all the way down."""
    names = sorted(p.name for p in a.iterdir() if p.name not in ignore)
    assert names == sorted(p.name for p in b.iterdir() if p.name not in ignore)
    for d in [n for n in names if (a / n).is_dir()]:
        assert_same_tree(a / d, b / d)
    _, mismatch, errors = filecmp.cmpfiles(a, b, [n for n in names if not (a / n).is_dir()], shallow=False)
    assert not mismatch and not errors, mismatch
