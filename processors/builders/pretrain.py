"""Pretraining examples from a labelled segment: one per task its labels support, each a natural-language
prompt (a template from ``templates/pretrain.yaml``, chosen per segment and task by hash) and a target
built only from the labels, so every target can be checked against them.

    examples, rejects = pretrain_examples(segment, templates)
    → [Example(stage="pretrain", task="asr", prompt="Detect the language …", target="<|en|>hello there"), …],
      [("emotion", "no emotion label"), …]

Targets:
- asr: ``<|lang|>`` + transcript (Qwen2-Audio's pretraining form); lid: the language's English name;
- s2tt: a translation the source gives for the whole utterance (a sidecar's ``labels.translation``
  ``{"zh": "…"}`` or a manifest column ``translation_zh``), into a language chosen per segment;
- sound_events: the events' AudioSet names, strongest first, where there is more than speech (plain
  speech is the lid, asr and speaker tasks' audio; "Speech" as its only answer teaches nothing of sounds
  and would fill this task in any speech corpus); speaker: count and, for one voice, gender;
- emotion; music: tempo, key, instruments, as far as labelled; timestamps: each event and speaker turn with
  its span; caption: one sentence composed from the labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TypeVar

import yaml

from schemas.example import AudioRef, Example, example_id
from schemas.labels import Labels
from schemas.segment import Segment

TEMPLATES = Path(__file__).parent / "templates" / "pretrain.yaml"
TASKS = ("asr", "s2tt", "lid", "sound_events", "speaker", "emotion", "music", "timestamps", "caption")
T = TypeVar("T")
NON_SPEECH_EVENTS = "Speech"          # an event that only repeats what the transcript says


@dataclasses.dataclass(frozen=True)
class Template:
    id: str          # "asr.v1.3"
    task: str
    text: str


def read_templates(path: str, section: str, prefix: str = "") -> dict[str, tuple[Template, ...]]:
    """A template file's ``section``: {task: [text, …]} → {task: (Template("<prefix><task>.v<version>.<n>"), …)}."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    version = int(data["version"])
    return {task: tuple(Template(f"{prefix}{task}.v{version}.{n}", task, text) for n, text in enumerate(texts, 1))
            for task, texts in data[section].items()}


@cache
def load_templates(path: str = str(TEMPLATES)) -> dict[str, tuple[Template, ...]]:
    out = read_templates(path, "tasks")
    missing = [t for t in TASKS if not out.get(t)]
    if missing:
        raise ValueError(f"{path}: no prompts for {missing}")
    return out


def stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def choose(options: Sequence[T], key: str) -> T:
    """The same option for the same key (segment and task) on every run."""
    return options[stable_hash(key) % len(options)]


@cache
def language_name(code: str) -> str:
    """Whisper's English name of a language code ("en" → "English"); the code itself when unknown."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code).title() if code else ""


# ---- targets: (target, labels used) or None with the reason there is none ----------------------------

def asr_target(labels: Labels) -> tuple[str, list[str]] | str:
    t = labels.transcript
    if t is None or not t.text.strip():
        return "no transcript"
    if not t.language:
        return "no language"
    return f"<|{t.language}|>{t.text.strip()}", ["transcript"]


def translations(seg: Segment) -> dict[str, str]:
    """{language: text} a source gives for the segment, only when the segment is the whole utterance its
    transcript came with (a manifest or sidecar transcript): a cut piece of a recording has no translation."""
    t = seg.labels.transcript
    if t is None or t.by != "manifest":
        return {}
    out = {k: v for k, v in (seg.extra.get("translation") or {}).items() if isinstance(v, str) and v.strip()}
    for col, v in (seg.extra.get("manifest") or {}).items():
        if col.startswith("translation_") and isinstance(v, str) and v.strip():
            out.setdefault(col.removeprefix("translation_"), v)
    return {k: v.strip() for k, v in out.items() if k and k != t.language}


def s2tt_target(seg: Segment) -> tuple[str, list[str], str] | str:
    found = translations(seg)
    if not found:
        return "no translation"
    lang = choose(sorted(found), f"{seg.id}/s2tt")
    return found[lang], ["transcript", "extra.translation"], lang


def lid_target(labels: Labels) -> tuple[str, list[str]] | str:
    t = labels.transcript
    if t is None or not t.language:
        return "no language"
    return language_name(t.language), ["transcript.language"]


# AudioSet classes that say only that someone speaks (or that nothing sounds).
SPEECH_ONLY = frozenset({"Speech", "Male speech, man speaking", "Female speech, woman speaking",
                         "Child speech, kid speaking", "Conversation", "Narration, monologue", "Speech synthesizer",
                         "Silence"})


def speech_only(labels: Labels) -> bool:
    """Whether the events say no more than that someone speaks (or that nothing sounds)."""
    return bool(labels.events) and {e.label for e in labels.events} <= SPEECH_ONLY


def events_target(labels: Labels) -> tuple[str, list[str]] | str:
    names = [e.label for e in sorted(labels.events, key=lambda e: -e.score)]
    if not names:
        return "no events"
    if speech_only(labels):
        return "speech only"
    # "; " between events: AudioSet names hold commas ("Beep, bleep") but never a semicolon.
    return "; ".join(dict.fromkeys(names)), ["events"]


def speaker_target(labels: Labels) -> tuple[str, list[str]] | str:
    s, p = labels.speakers, labels.paralinguistic
    if s is None or s.count < 1:
        return "no speakers"
    if s.count == 1:
        gender = p.gender if p is not None and p.gender else ""
        return ("One speaker" + (f", {gender}" if gender else "") + "."), ["speakers"] + (["paralinguistic.gender"] if gender else [])
    return f"{s.count} speakers.", ["speakers"]


def emotion_target(labels: Labels) -> tuple[str, list[str]] | str:
    p = labels.paralinguistic
    if p is None or not p.emotion:
        return "no emotion label"
    return p.emotion.capitalize() + ".", ["paralinguistic.emotion"]


def music_target(labels: Labels) -> tuple[str, list[str]] | str:
    m = labels.music
    if m is None or not (m.tempo_bpm or m.key or m.instruments):
        return "no music label"
    parts = []
    if m.tempo_bpm:
        parts.append(f"tempo about {round(m.tempo_bpm)} BPM")
    if m.key:
        parts.append(f"key {m.key}")
    if m.instruments:
        parts.append("instruments: " + ", ".join(m.instruments))
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + ".", ["music"]


def timestamps_target(labels: Labels) -> tuple[str, list[str]] | str:
    spans, used = [], []
    for e in labels.events:
        if e.start_s is not None and e.end_s is not None and e.label != NON_SPEECH_EVENTS:
            spans.append((e.start_s, e.end_s, e.label))
            used = ["events"]
    if labels.speakers is not None and labels.speakers.turns:
        spans += [(t.start_s, t.end_s, f"speaker {t.speaker}") for t in labels.speakers.turns]
        used.append("speakers")
    if not spans:
        return "no timed labels"
    return "; ".join(f"{name}: {a:.2f}-{b:.2f} s" for a, b, name in sorted(spans)), used


def caption_target(labels: Labels) -> tuple[str, list[str]] | str:
    """One sentence that says only what the labels say: who speaks which language, which other sounds,
    what music."""
    used: list[str] = []
    clauses = []
    t, s, p = labels.transcript, labels.speakers, labels.paralinguistic
    if t is not None and t.text.strip():
        if s is not None and s.count > 1:
            who = f"{s.count} people"
            used.append("speakers")
        elif p is not None and p.gender:
            who = {"male": "A man", "female": "A woman"}.get(p.gender, "Someone")
            used.append("paralinguistic.gender")
        else:
            who = "Someone"
        verb = "speak" if who.endswith("people") else "speaks"
        lang = language_name(t.language)
        clauses.append(f"{who} {verb}{' ' + lang if lang else ''}")
        used.append("transcript")
        if p is not None and p.emotion:
            clauses[-1] += f" and {'sound' if verb == 'speak' else 'sounds'} {p.emotion}"
            used.append("paralinguistic.emotion")
    sounds = [e.label.lower() for e in sorted(labels.events, key=lambda e: -e.score)
              if e.label not in (NON_SPEECH_EVENTS, "Music", "Silence") and e.label not in (labels.music.instruments if labels.music else ())]
    if sounds:
        clauses.append(("while " if clauses else "") + f"{join_words(sounds[:2])} can be heard")
        used.append("events")
    m = labels.music
    if m is not None and (m.instruments or m.tempo_bpm):
        inst = join_words([i.lower() for i in m.instruments[:2]]) if m.instruments else ""
        music = f"{inst} music" if inst else "music"
        tempo = f" at about {round(m.tempo_bpm)} BPM" if m.tempo_bpm else ""
        clauses.append(("with " if clauses else "") + f"{music}{tempo}" + ("" if clauses else " plays"))
        used.append("music")
    if not clauses:
        return "no labels to describe"
    text = " ".join(clauses)
    return text[0].upper() + text[1:] + ".", used


def join_words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


TARGETS = {"asr": asr_target, "lid": lid_target, "sound_events": events_target, "speaker": speaker_target,
           "emotion": emotion_target, "music": music_target, "timestamps": timestamps_target,
           "caption": caption_target}


def pretrain_examples(seg: Segment, templates: dict[str, tuple[Template, ...]] | None = None,
                      tasks: tuple[str, ...] = TASKS) -> tuple[list[Example], list[tuple[str, str]]]:
    """(one example per task the segment's labels support, (task, reason) for each task they do not)."""
    templates = templates or load_templates()
    examples, rejects = [], []
    for task in tasks:
        got = s2tt_target(seg) if task == "s2tt" else TARGETS[task](seg.labels)
        if isinstance(got, str):
            rejects.append((task, got))
            continue
        target, used = got[:2]
        tpl = choose(templates[task], f"{seg.id}/{task}")
        prompt = tpl.text.format(language=language_name(got[2])) if task == "s2tt" else tpl.text
        examples.append(Example(
            id=example_id("pretrain", task, [seg.id], tpl.id), stage="pretrain", task=task,
            audio=[AudioRef("audio0.flac", seg.id, seg.duration_s)], template=tpl.id, prompt=prompt,
            target=target, provenance={"segments": [seg.id], "labels_used": used,
                                       "license": [seg.source.license] if seg.source.license else []}))
    return examples, rejects
