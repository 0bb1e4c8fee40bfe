"""Sampled DPO candidates: replies drawn from a policy this project's trainer exported
(``OUTPUT/<stage>/final``), scored against the segment's labels, the best and the worst kept as a pair when
they are far enough apart.

    policy = Policy("train-out/sft/final")
    replies = policy.sample(example, [audio], n=4, temperature=1.0, seed=7)
    scored = [(score_reply("speakers", r, labels), r) for r in replies]
    pair = rank(scored, margin=0.3, min_chosen=0.5)     → (chosen, rejected) or the reason there is none

Scorers (each in [0, 1], each looking only at labels):
- transcript: 1 − WER against the transcript (of the quoted words when the reply quotes);
- events: F1 of the event names the reply mentions against the labelled events;
- speakers: 1 when the count the reply states is the labelled count;
- language / emotion: 1 when the reply names the labelled one and no other;
- music: the share of labelled facts (tempo within 4 %, key, instruments) the reply states.

Each score is multiplied by the reply's form: the share of its words that a grounded answer could hold (the
answers' own words, the labels' words, language names), so a garbled reply that happens to name the right
language does not win.
"""

from __future__ import annotations

import re

import numpy as np

from processors.builders.analysis import OTHER_EMOTIONS, OTHER_EVENTS, OTHER_LANGUAGES
from processors.builders.pretrain import language_name
from schemas.example import Example
from schemas.labels import Labels

NUMBERS = {"no": 0, "zero": 0, "one": 1, "a single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
           "seven": 7, "eight": 8, "nine": 9, "ten": 10}


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9#']+", text.lower())) + " "


def _mentions(text: str, name: str) -> bool:
    return _words(name) in _words(text)


def event_vocabulary(labels: Labels) -> list[str]:
    """Event names a reply is checked for: the labelled ones, the distractors, and every AudioSet class
    when the class map is installed."""
    names = {e.label for e in labels.events} | set(OTHER_EVENTS)
    from processors.labelers.events import class_names
    from processors.labelers.models import ModelMissing

    try:
        names |= set(class_names())
    except ModelMissing:
        pass
    return sorted(names)


def stated_count(text: str) -> int | None:
    w = _words(text)
    for m in re.finditer(r" (\d+) (?:speaker|voice|people|person)", w):
        return int(m.group(1))
    for word, n in sorted(NUMBERS.items(), key=lambda kv: -len(kv[0])):
        if re.search(rf" {word} (?:speaker|voice|people|person|different)", w):
            return n
    return None


ANSWER_WORDS = frozenset("""
i can hear there is are one no speaker speakers voice voices people person the speech in says speaker sounds
it features tempo about bpm key and a an of with while music first second clip clips neither both yes has at
""".split())


def form(reply: str, labels: Labels, vocabulary: list[str] | None = None) -> float:
    """The share of the reply's words that are answer words, label words, event names or language names."""
    words = re.findall(r"\S+", reply.lower())
    if not words:
        return 0.0
    known = set(ANSWER_WORDS) | {language_name(c).lower() for c in OTHER_LANGUAGES}
    known |= set(_words(" ".join([e.label for e in labels.events] + list(vocabulary or []))).split())
    if labels.transcript is not None:
        known |= set(_words(labels.transcript.text).split()) | set(_words(language_name(labels.transcript.language)).split())
    if labels.paralinguistic is not None:
        known |= {labels.paralinguistic.emotion.lower()} | set(OTHER_EMOTIONS)
    if labels.music is not None:
        known |= set(_words(labels.music.key + " " + " ".join(labels.music.instruments)).split())
    ok = sum(1 for w in words if w.strip(".,!?:;\"'") in known or re.fullmatch(r"\d+(\.\d+)?[.,]?", w))
    return ok / len(words)


def score_reply(topic: str, reply: str, labels: Labels, vocabulary: list[str] | None = None) -> float:
    """The topic's label score times the reply's form."""
    return _topic_score(topic, reply, labels, vocabulary) * form(reply, labels, vocabulary)


def _topic_score(topic: str, reply: str, labels: Labels, vocabulary: list[str] | None = None) -> float:
    t, s, p, m = labels.transcript, labels.speakers, labels.paralinguistic, labels.music
    if topic == "transcript" and t is not None:
        from processors.labelers.asr import disagreement

        quoted = re.findall(r'"([^"]+)"', reply)
        return max(0.0, 1.0 - disagreement(t.text, quoted[0] if quoted else reply))
    if topic == "events":
        truth = {e.label.lower() for e in labels.events}
        said = {n.lower() for n in (vocabulary or event_vocabulary(labels)) if _mentions(reply, n)}
        hit = len(truth & said)
        if not hit:
            return 0.0
        precision, recall = hit / len(said), hit / len(truth)
        return 2 * precision * recall / (precision + recall)
    if topic == "speakers" and s is not None:
        return float(stated_count(reply) == s.count)
    if topic == "language" and t is not None and t.language:
        named = {c for c in set(OTHER_LANGUAGES) | {t.language} if _mentions(reply, language_name(c))}
        return float(named == {t.language})
    if topic == "emotion" and p is not None and p.emotion:
        named = {e for e in set(OTHER_EMOTIONS) | {p.emotion} if _mentions(reply, e)}
        return float(named == {p.emotion})
    if topic == "music" and m is not None:
        facts, got = 0, 0
        if m.tempo_bpm:
            facts += 1
            got += any(abs(float(n) - m.tempo_bpm) <= 0.04 * m.tempo_bpm for n in re.findall(r"\d+(?:\.\d+)?", reply))
        if m.key:
            facts += 1
            got += _mentions(reply, m.key)
        for inst in m.instruments:
            facts += 1
            got += _mentions(reply, inst)
        return got / facts if facts else 0.0
    return 0.0


def rank(scored: list[tuple[float, str]], margin: float, min_chosen: float) -> tuple[tuple[float, str], tuple[float, str]] | str:
    """The best and the worst distinct reply, or why they make no pair ("identical_samples",
    "chosen_below_min", "below_margin")."""
    distinct = sorted({r.strip(): sc for sc, r in scored if r.strip()}.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(distinct) < 2:
        return "identical_samples"
    (best, sb), (worst, sw) = distinct[0], distinct[-1]
    if sb < min_chosen:
        return "chosen_below_min"
    if sb - sw < margin:
        return "below_margin"
    return (sb, best), (sw, worst)


class Policy:
    """A checkpoint exported by ``audiomill train`` (model and processor from ``save_pretrained``), loaded
    once; replies are sampled with the trainer's own prompt rendering, so the policy sees its training format."""

    def __init__(self, path: str):
        import torch

        from trainer.data import Encoder
        from trainer.features import LogMel
        from trainer.model import load_pretrained

        self.path = path
        self.model, self.processor = load_pretrained(path)
        self.model.eval()
        self.encoder = Encoder.for_processor(self.processor)
        self.logmel = LogMel(self.processor.feature_extractor)
        tok = self.processor.tokenizer
        self.eos = [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
        self.torch = torch

    def sample(self, ex: Example, audios: list[np.ndarray], n: int, temperature: float = 1.0,
               max_new_tokens: int = 40, seed: int = 0) -> list[str]:
        torch = self.torch
        ids = torch.tensor([self.encoder.prompt_ids(ex, audios)])
        inputs = {"input_ids": ids.repeat(n, 1), "attention_mask": torch.ones_like(ids).repeat(n, 1)}
        if audios:
            feats, mask = self.logmel(audios)
            inputs["input_features"] = feats.to(self.model.dtype).repeat(n, 1, 1)
            inputs["feature_attention_mask"] = mask.repeat(n, 1)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                      max_new_tokens=max_new_tokens, eos_token_id=self.eos,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        tok = self.processor.tokenizer
        return [tok.decode(row[ids.shape[1]:], skip_special_tokens=True).strip() for row in out]
