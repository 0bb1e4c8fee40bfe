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

from processors.builders.pretrain import (Template, choose, join_words, language_name, read_templates, speech_only,
                                          stable_hash)
from schemas.example import AudioRef, Example, assistant_turn, example_id, user_audio_turn
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
def load_questions(path: str = str(TEMPLATES), section: str = "topics") -> dict[str, tuple[Template, ...]]:
    """Questions of one section; ids of sections other than ``topics`` start with the section's name."""
    return read_templates(path, section, "" if section == "topics" else f"{section}.")


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


def asked(topic: str, labels: Labels) -> bool:
    """Whether a conversation or a DPO pair asks about ``topic``: the labels answer it, and "What can you
    hear?" is not asked of plain speech (as pretraining's sound_events, ``pretrain.speech_only``; SFT and DPO
    ask alike, so DPO does not teach "I can hear speech." where SFT taught the sounds)."""
    return answer(topic, labels) is not None and not (topic == "events" and speech_only(labels))


def conversation(seg: Segment, max_turns: int = 3) -> Example | None:
    questions = load_questions()
    topics = sorted((t for t in TOPICS if asked(t, seg.labels)), key=lambda t: stable_hash(f"{seg.id}/{t}"))[:max_turns]
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
    topics = sorted((t for t in TOPICS if asked(t, seg.labels) and negative(t, seg.labels, seg.id)),
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


# ---- two clips ---------------------------------------------------------------------------------------

COMPARE_TOPICS = ("events", "speakers", "language")
WHICH = ("first", "second")


def compare_answer(topic: str, a: Labels, b: Labels) -> str | None:
    """An answer about both clips from both label sets, or None when either lacks the topic."""
    got = [answer(topic, x) for x in (a, b)]
    if not all(got):
        return None
    if topic == "speakers":
        ca, cb = a.speakers.count, b.speakers.count
        per = f"The first clip has {_speakers(ca)} and the second has {_speakers(cb)}."
        if ca == cb:
            return f"Neither: both clips have {_speakers(ca)}."
        return f"The {'first' if ca > cb else 'second'} clip. " + per
    if topic == "language":
        la, lb = a.transcript.language, b.transcript.language
        if la == lb:
            return f"Yes, both clips are in {language_name(la)}."
        return f"No. The first clip is in {language_name(la)} and the second is in {language_name(lb)}."
    first, second = (g[0].removeprefix("I can hear ").rstrip(".") for g in got)
    return f"In the first clip I can hear {first}. In the second, I can hear {second}."


def _speakers(n: int) -> str:
    return "one speaker" if n == 1 else f"{n} speakers"


def _provenance(segs: list[Segment], used: list[str]) -> dict:
    return {"segments": [s.id for s in segs], "labels_used": used,
            "license": sorted({s.source.license for s in segs if s.source.license})}


def compare(a: Segment, b: Segment) -> Example | None:
    """A conversation about two clips: one question on a topic both clips' labels support."""
    topics = [t for t in COMPARE_TOPICS if compare_answer(t, a.labels, b.labels)]
    if not topics:
        return None
    topic = choose(topics, f"{a.id}/{b.id}/compare")
    q = choose(load_questions(section="compare")[topic], f"{a.id}/{b.id}/compare/{topic}")
    reply = compare_answer(topic, a.labels, b.labels)
    label = answer(topic, a.labels)[1]
    return Example(id=example_id("sft", "compare", [a.id, b.id], q.id), stage="sft", task="compare",
                   audio=[AudioRef("audio0.flac", a.id, a.duration_s), AudioRef("audio1.flac", b.id, b.duration_s)],
                   template=q.id, messages=[user_audio_turn(q.text, 2), assistant_turn(reply)],
                   provenance=_provenance([a, b], [label]))


def wrong_clip_pair(a: Segment, b: Segment) -> Example | None:
    """Asked about one of two clips: chosen answers about that clip, rejected about the other."""
    topics = [t for t in COMPARE_TOPICS
              if answer(t, a.labels) and answer(t, b.labels) and answer(t, a.labels)[0] != answer(t, b.labels)[0]]
    if not topics:
        return None
    topic = choose(topics, f"{a.id}/{b.id}/wrong_clip")
    which = stable_hash(f"{a.id}/{b.id}/which") % 2
    asked, other = (a, b) if which == 0 else (b, a)
    q = choose(load_questions(section="about_clip")[topic], f"{a.id}/{b.id}/about/{topic}")
    chosen, label = answer(topic, asked.labels)
    rejected, _ = answer(topic, other.labels)
    return Example(id=example_id("dpo", "compare", [a.id, b.id], q.id, salt=WHICH[which]), stage="dpo",
                   task="compare",
                   audio=[AudioRef("audio0.flac", a.id, a.duration_s), AudioRef("audio1.flac", b.id, b.duration_s)],
                   template=q.id, messages=[user_audio_turn(q.text.format(which=WHICH[which]), 2)],
                   chosen=chosen, rejected=rejected, rejected_kind="wrong_clip",
                   score={"chosen": 1.0, "rejected": 0.0, "by": "labels"}, provenance=_provenance([a, b], [label]))
