"""Audio-analysis conversations and label-grounded DPO pairs from a labelled segment.

An SFT conversation asks up to ``max_turns`` questions about the topics the segment's labels support
(events, speakers, language, transcript, emotion, music), in an order and wording chosen per segment by
hash, and answers each from the labels only. The audio comes with the first question; there is no system
prompt (FORMAT.md).

A DPO pair asks one such question: ``chosen`` is the grounded answer, ``rejected`` a hard negative of a named
kind made by changing one labelled fact: ``hallucinated_event`` (an event that is not there),
``wrong_count``, ``wrong_language``, ``wrong_emotion`` or ``wrong_transcript`` (words substituted).

    conversation(segment) → Example(stage="sft", task="analysis", messages=[…]) or None
    dpo_pairs(segment)    → [Example(stage="dpo", rejected_kind="wrong_count", …), …]
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from processors.builders.pretrain import Template, choose, join_words, language_name, read_templates, stable_hash
from schemas.example import AudioRef, Example, example_id
from schemas.labels import Labels
from schemas.segment import Segment

TEMPLATES = Path(__file__).parent / "templates" / "analysis.yaml"
TOPICS = ("events", "speakers", "language", "transcript", "emotion", "music")
# Distractors for hard negatives: common AudioSet classes and a few languages and emotions.
OTHER_EVENTS = ("Dog", "Car horn", "Siren", "Applause", "Rain", "Telephone", "Baby cry, infant cry", "Door",
                "Thunder", "Bird", "Church bell", "Laughter")
OTHER_LANGUAGES = ("en", "de", "fr", "es", "it", "zh", "ja", "ru")
OTHER_EMOTIONS = ("happy", "sad", "angry", "neutral", "fearful", "surprised")
SWAP_WORDS = ("river", "yellow", "seven", "window", "garden", "quickly", "table", "morning")


@cache
def load_questions(path: str = str(TEMPLATES)) -> dict[str, tuple[Template, ...]]:
    return read_templates(path, "topics")


# ---- grounded answers --------------------------------------------------------------------------------

def answer(topic: str, labels: Labels) -> tuple[str, str] | None:
    """(answer, label used) for a topic the labels support, else None."""
    t, s, p, m = labels.transcript, labels.speakers, labels.paralinguistic, labels.music
    if topic == "events" and labels.events:
        names = list(dict.fromkeys(e.label.lower() for e in sorted(labels.events, key=lambda e: -e.score)))
        return f"I can hear {join_words(names[:4])}.", "events"
    if topic == "speakers" and s is not None and s.count >= 1:
        return ("There is one speaker." if s.count == 1 else f"There are {s.count} speakers."), "speakers"
    if topic == "language" and t is not None and t.language:
        return f"The speech is in {language_name(t.language)}.", "transcript.language"
    if topic == "transcript" and t is not None and t.text.strip():
        return f"The speaker says: \"{t.text.strip()}\"", "transcript"
    if topic == "emotion" and p is not None and p.emotion:
        return f"The speaker sounds {p.emotion}.", "paralinguistic.emotion"
    if topic == "music" and m is not None and (m.tempo_bpm or m.key or m.instruments):
        parts = []
        if m.instruments:
            parts.append(f"it features {join_words([i.lower() for i in m.instruments])}")
        if m.tempo_bpm:
            parts.append(f"the tempo is about {round(m.tempo_bpm)} BPM")
        if m.key:
            parts.append(f"it is in {m.key}")
        text = ", ".join(parts)
        return text[0].upper() + text[1:] + ".", "music"
    return None


def conversation(seg: Segment, max_turns: int = 3) -> Example | None:
    questions = load_questions()
    topics = sorted((t for t in TOPICS if answer(t, seg.labels)), key=lambda t: stable_hash(f"{seg.id}/{t}"))[:max_turns]
    if not topics:
        return None
    messages, used, ids = [], [], []
    for n, topic in enumerate(topics):
        q = choose(questions[topic], f"{seg.id}/{topic}")
        text, label = answer(topic, seg.labels)
        content = ([{"type": "audio", "audio": 0}] if n == 0 else []) + [{"type": "text", "text": q.text}]
        messages += [{"role": "user", "content": content},
                     {"role": "assistant", "content": [{"type": "text", "text": text}]}]
        used.append(label)
        ids.append(q.id)
    template = "+".join(ids)
    return Example(id=example_id("sft", "analysis", [seg.id], template), stage="sft", task="analysis",
                   audio=[AudioRef("audio0.flac", seg.id, seg.duration_s)], template=template, messages=messages,
                   provenance={"segments": [seg.id], "labels_used": used,
                               "license": [seg.source.license] if seg.source.license else []})


# ---- hard negatives ----------------------------------------------------------------------------------

def negative(topic: str, labels: Labels, key: str) -> tuple[str, str] | None:
    """(rejected reply, its kind): the grounded answer with one labelled fact changed."""
    t, s, p = labels.transcript, labels.speakers, labels.paralinguistic
    if topic == "events" and labels.events:
        present = {e.label for e in labels.events}
        extra = [e for e in OTHER_EVENTS if e not in present]
        fake = choose(extra, key)
        names = list(dict.fromkeys(e.label.lower() for e in sorted(labels.events, key=lambda e: -e.score)))[:3]
        return f"I can hear {join_words(names + [fake.lower()])}.", "hallucinated_event"
    if topic == "speakers" and s is not None and s.count >= 1:
        wrong = s.count + 1 if s.count == 1 or stable_hash(key) % 2 else s.count - 1
        return ("There is one speaker." if wrong == 1 else f"There are {wrong} speakers."), "wrong_count"
    if topic == "language" and t is not None and t.language:
        others = [c for c in OTHER_LANGUAGES if c != t.language]
        return f"The speech is in {language_name(choose(others, key))}.", "wrong_language"
    if topic == "emotion" and p is not None and p.emotion:
        others = [e for e in OTHER_EMOTIONS if e != p.emotion]
        return f"The speaker sounds {choose(others, key)}.", "wrong_emotion"
    if topic == "transcript" and t is not None and len(t.text.split()) >= 2:
        words = t.text.strip().split()
        at = stable_hash(key) % len(words)
        swap = [w for w in SWAP_WORDS if w != words[at].lower().strip(".,!?")]
        words[at] = choose(swap, key + "/w")
        return f"The speaker says: \"{' '.join(words)}\"", "wrong_transcript"
    return None


def dpo_pairs(seg: Segment, max_pairs: int = 2) -> list[Example]:
    questions = load_questions()
    out = []
    topics = sorted((t for t in TOPICS if answer(t, seg.labels) and negative(t, seg.labels, seg.id)),
                    key=lambda t: stable_hash(f"{seg.id}/dpo/{t}"))[:max_pairs]
    for topic in topics:
        q = choose(questions[topic], f"{seg.id}/dpo/{topic}")
        chosen, label = answer(topic, seg.labels)
        rejected, kind = negative(topic, seg.labels, f"{seg.id}/{topic}")
        out.append(Example(
            id=example_id("dpo", "analysis", [seg.id], q.id, salt=kind), stage="dpo", task="analysis",
            audio=[AudioRef("audio0.flac", seg.id, seg.duration_s)], template=q.id,
            messages=[{"role": "user", "content": [{"type": "audio", "audio": 0}, {"type": "text", "text": q.text}]}],
            chosen=chosen, rejected=rejected, rejected_kind=kind,
            score={"chosen": 1.0, "rejected": 0.0, "by": "labels"},
            provenance={"segments": [seg.id], "labels_used": [label],
                        "license": [seg.source.license] if seg.source.license else []}))
    return out
