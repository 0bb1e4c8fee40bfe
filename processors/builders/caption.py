"""Captions: one sentence composed from a segment's labels (``pretrain.caption_target``), optionally
reworded by a local transformers causal LM. A rewording is kept only when it states nothing the labels do
not: every content word must come from the composed caption or the labels, every number must be one the
caption states, and it may not grow past twice the caption's length. Otherwise the composed caption stays.

    rewriter = CaptionRewriter("models/my-lm")        # a folder written by save_pretrained
    rewriter.rewrite("A woman speaks English while a dog barking can be heard.", labels)
    → ("A woman is speaking English while a dog barks.", True) or (the composed caption, False)
"""

from __future__ import annotations

import re

from processors.builders.pretrain import language_name
from schemas.labels import Labels

# Words that carry no claim about the audio (articles, connectives, verbs of hearing and speaking).
FUNCTION_WORDS = frozenset("""
a an the and or while with as in on at of to is are be being been can could may there here this that it its
is was were one someone somebody person people voice voices speaks speak speaking talks talk talking says
say saying heard hear hearing audible sound sounds sounding noise background foreground also too along
together meanwhile plays play playing played music musical piece song tune at about around roughly
approximately beats per minute bpm tempo key major minor sharp flat clip recording audio
""".split())
GENDER_WORDS = {"male": {"man", "male", "he", "his", "him"}, "female": {"woman", "female", "she", "her"}}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+(?:\.\d+)?", text.lower())


def allowed_words(caption: str, labels: Labels) -> set[str]:
    allowed = set(words(caption))
    for e in labels.events:
        allowed |= set(words(e.label))
    t, p, m = labels.transcript, labels.paralinguistic, labels.music
    if t is not None and t.language:
        allowed |= set(words(language_name(t.language)))
    if p is not None:
        allowed |= set(words(p.emotion)) | GENDER_WORDS.get(p.gender, set())
    if m is not None:
        allowed |= set(words(m.key)) | {w for i in m.instruments for w in words(i)}
    return allowed


def supported(text: str, caption: str, labels: Labels) -> bool:
    """Whether a reworded caption states only what the labels support (see the module's rules)."""
    said = words(text)
    if not said or len(said) > 2 * max(1, len(words(caption))):
        return False
    numbers = {w for w in words(caption) if w[0].isdigit()}
    allowed = allowed_words(caption, labels)
    gender = labels.paralinguistic.gender if labels.paralinguistic else ""
    wrong_gender = set().union(*(v for k, v in GENDER_WORDS.items() if k != gender)) - GENDER_WORDS.get(gender, set())
    for w in said:
        if w[0].isdigit():
            if w not in numbers:
                return False
        elif w in wrong_gender and w not in allowed:
            return False
        elif w not in allowed and w not in FUNCTION_WORDS and not _inflected(w, allowed):
            return False
    return True


def _inflected(word: str, allowed: set[str]) -> bool:
    """"barks" for "barking", "rings" for "ringing": the same stem as an allowed word."""
    stem = re.sub(r"(ing|es|s|ed)$", "", word)
    return len(stem) >= 3 and any(re.sub(r"(ing|es|s|ed)$", "", a) == stem for a in allowed)


class CaptionRewriter:
    """A local causal LM (a folder with a tokenizer and ``AutoModelForCausalLM`` weights), loaded once."""

    PROMPT = "Rewrite this description of a sound recording in other words, adding nothing:\n{caption}\nRewritten:"

    def __init__(self, path: str, max_new_tokens: int = 40):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.max_new_tokens = path, max_new_tokens
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()

    def generate(self, caption: str) -> str:
        import torch

        ids = self.tok(self.PROMPT.format(caption=caption), return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
        text = self.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return text.strip().split("\n")[0].strip()

    def rewrite(self, caption: str, labels: Labels) -> tuple[str, bool]:
        """(caption to use, whether it is the model's rewording)."""
        text = self.generate(caption)
        return (text, True) if supported(text, caption, labels) else (caption, False)
