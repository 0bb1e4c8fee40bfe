"""Decontamination: find training segments that hold audio or text of an evaluation set.

Audio is matched with the dedup machinery (landmark fingerprints, ``processors/dedup.find_relations``), so
an exact copy, a re-encoded, resampled, gain-changed or trimmed copy, a segment cut from an eval recording
and an eval clip inside a segment all count. Text is matched on word n-grams of the normalised transcripts
(``ngram`` words, or the whole transcript when it is shorter).

    evals = [eval_set("my-eval", eval_items)]          # fingerprinted once
    contaminated(segments, evals) → {"seg-…": ("my-eval", "eval_audio"), …}

``segments`` and eval items are ``(key, 16 kHz audio, transcript)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from processors.dedup import DedupItem, NearParams, find_relations
from processors.audio import to_pcm16
from processors.fingerprint import Fingerprinter, PcmHasher
from processors.labelers.asr import normalise

Item = tuple[str, np.ndarray, str]


def dedup_item(key: str, x: np.ndarray) -> DedupItem:
    """What curate's dedup sees of an input: the PCM hash and the landmark fingerprint."""
    x = np.asarray(x, np.float32)
    fp, pcm = Fingerprinter(), PcmHasher()
    fp.update(x)
    pcm.update(to_pcm16(x))
    return DedupItem(key, pcm.hexdigest(), fp.finish(), len(x) / 16000, (key,))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalise(text).split()
    if not words:
        return set()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """An evaluation corpus as decontamination sees it: each item's dedup fingerprint and the word n-grams
    of its transcripts. Made once per job (``eval_set``), then checked against every unit of segments."""

    name: str
    items: tuple[DedupItem, ...]
    grams: frozenset
    unreadable: int = 0          # items that could not be decoded, so cannot be matched on audio


def eval_set(name: str, items: list[Item], ngram: int = 8, unreadable: int = 0) -> EvalSet:
    grams = frozenset().union(*(ngrams(t, ngram) for _, _, t in items if t)) if items else frozenset()
    return EvalSet(name, tuple(dedup_item(f"eval/{k}", x) for k, x, _ in items), grams, unreadable)


def contaminated(segments: list[Item], eval_sets: list[EvalSet], near: NearParams = NearParams(),
                 ngram: int = 8) -> dict[str, tuple[str, str]]:
    """{segment key: (eval set, "eval_audio" | "eval_transcript")} for every segment that matches; audio
    is checked first, and the first eval set (by name) that matches is named."""
    out: dict[str, tuple[str, str]] = {}
    mine = [dedup_item(k, x) for k, x, _ in segments] if eval_sets else []
    for ev in sorted(eval_sets, key=lambda e: e.name):
        every = list(ev.items) + mine
        for r in find_relations(every, near):
            a, b = sorted((r.a, r.b))
            if a < len(ev.items) <= b:                   # one eval item and one segment
                out.setdefault(every[b].uri, (ev.name, "eval_audio"))
        for key, _, text in segments:
            if key not in out and text and ngrams(text, ngram) & ev.grams:
                out[key] = (ev.name, "eval_transcript")
    return out
