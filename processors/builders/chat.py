"""Voice chat and mixed scenes: SFT examples whose user turn is audio only.

- ``voice_chat``: an instruction from a JSONL set (``data/instructions.jsonl`` by default; lines of
  ``{"id", "instruction", "answer"}``, an optional ``"language"`` ("en" when absent) and optional
  ``"keywords"``) spoken by TTS in a voice of its language (``voice_for``); the assistant answers the request
  itself. The example carries the answer's keywords (``keywords``), so an evaluation can check that a reply
  answers the spoken request rather than match it word for word.
- ``mixed_scene``: a spoken question about the scene ("What sounds can you hear around me?", from the
  ``scene`` section of ``templates/analysis.yaml``) laid over a labelled segment at a set SNR; the answer
  comes from the segment's labels (``analysis.answer``).
- ``layered_scene``: the same over a sound-event segment and a multi-speaker segment played together,
  asking about both ("What else can you hear while these people talk, and how many of them are there?").
- ``ignored_instruction_pair``: a DPO pair on a spoken instruction whose rejected reply answers another one.

TTS is configurable (``Voice``: espeak-ng with any of its voices, flite's English voices, or Piper's joe voice, each at a set rate).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from processors.builders.analysis import answer, load_questions
from processors.builders.pretrain import choose, join_words
from schemas.example import AudioRef, Example, example_id
from schemas.segment import Segment

SR = 16000
MAX_S = 30.0
INSTRUCTIONS = Path(__file__).parent / "data" / "instructions.jsonl"


@dataclasses.dataclass(frozen=True)
class Voice:
    backend: str = "espeak"      # espeak | flite | piper
    name: str = "en-us"          # espeak-ng voice (language + variant: "en-us+f2"); flite: slt, kal, awb, rms; piper: joe
    rate: int = 160              # words per minute (piper: relative to its natural 160)

    @property
    def id(self) -> str:
        return f"{self.backend}:{self.name}@{self.rate}"


def parse_voice(spec: str) -> Voice:
    """"backend:name@rate" → Voice ("espeak:en-us+f2@140", "flite:slt@160", "piper:joe@150")."""
    backend, _, rest = spec.partition(":")
    name, _, rate = rest.partition("@")
    if backend not in ("espeak", "flite", "piper") or not name or not rate.isdigit() or not 80 <= int(rate) <= 400:
        raise ValueError(f"voice {spec!r}: expected backend:name@rate with backend espeak, flite or piper and "
                         "a rate of 80-400 words per minute, e.g. espeak:en-us+f2@140")
    return Voice(backend, name, int(rate))


def language_of(voice: Voice) -> str:
    """The language a voice speaks: flite and Piper's joe speak English; espeak-ng's voice names it."""
    return voice.name.split("+")[0].split("-")[0] if voice.backend == "espeak" else "en"


def voice_for(item: dict[str, str], voices: list[Voice]) -> Voice:
    """One of the voices that speak the item's language, chosen per item; espeak-ng's voice of the
    language when none of them does."""
    lang = item.get("language", "en")
    mine = [v for v in voices if language_of(v) == lang]
    return choose(mine, f"voice/{item['id']}") if mine else Voice("espeak", lang, 160)


def speak(text: str, voice: Voice) -> np.ndarray:
    from processors.tts import espeak, flite, piper

    if voice.backend == "flite":
        return flite(text, voice.name, voice.rate)
    if voice.backend == "piper":
        return piper(text, length_scale=160 / voice.rate)
    if voice.backend == "espeak":
        return espeak(text, voice.name, voice.rate)
    raise ValueError(f"TTS backend {voice.backend!r} is not one of espeak, flite, piper")


def load_instructions(path: str | Path = INSTRUCTIONS) -> list[dict[str, str]]:
    """The instruction set; a bad line is an error naming the file and line."""
    out, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                     for k in ("id", "instruction", "answer")):
                raise ValueError(f"{path}:{n}: needs non-empty string fields id, instruction and answer")
            if not isinstance(item.setdefault("language", "en"), str) or not item["language"]:
                raise ValueError(f"{path}:{n}: language must be a language code such as \"en\"")
            if item["id"] in seen:
                raise ValueError(f"{path}:{n}: id {item['id']!r} repeats")
            seen.add(item["id"])
            out.append(item)
    return out


# Words that say nothing about what was asked, in the instruction set's languages; the rest of an answer's
# words that the instruction does not already hold are what show that a reply answers it.
STOP_WORDS = frozenset("""
a an the is are was were be been it its this that there these those of in on at to for from by with and or
as but if so not no yes you your i me my we our he she they them his her their do does did can could will
would should have has had about then than into out up down over after before
der die das ein eine ist sind und oder zu von mit im in auf für es ich du sie wir nicht
le la les un une des est sont et ou de du au aux en dans pour par avec il elle je tu nous vous ne pas
el los las uno una es son y o del al en por para con yo tú no se lo
il lo gli uno una è sono e o di da con per non
""".split())


def keywords(item: dict) -> list[str]:
    """The words of ``item["answer"]`` that a reply must hold to answer the instruction: its own
    ``"keywords"`` when given, else the answer's words that are neither stop words nor in the instruction."""
    if item.get("keywords"):
        return [w.lower() for w in item["keywords"]]
    said = [w for w in dict.fromkeys(re.findall(r"\w+", item["answer"].lower())) if w not in STOP_WORDS]
    asked = set(re.findall(r"\w+", item["instruction"].lower()))
    return [w for w in said if w not in asked] or said


def voice_chat(item: dict[str, str], voice: Voice) -> tuple[Example, list[np.ndarray]] | None:
    """The spoken instruction and its answer; None when the speech runs past 30 s."""
    audio = speak(item["instruction"], voice)
    if len(audio) > MAX_S * SR:
        return None
    source = f"tts-{item['id']}-{voice.id}"
    ex = Example(id=example_id("sft", "voice_chat", [source], voice.id), stage="sft", task="voice_chat",
                 audio=[AudioRef("audio0.flac", source, round(len(audio) / SR, 3))], template=voice.id,
                 messages=[{"role": "user", "content": [{"type": "audio", "audio": 0}]},
                           {"role": "assistant", "content": [{"type": "text", "text": item["answer"]}]}],
                 provenance={"segments": [], "instruction": item["id"], "voice": voice.id, "labels_used": [],
                             "keywords": keywords(item)})
    return ex, [audio]


def mix(command: np.ndarray, scene: np.ndarray, snr_db: float, lead_s: float = 0.5,
        tail_s: float = 0.5) -> tuple[np.ndarray, float, float]:
    """(mixture, command gain, scene gain): the whole scene (repeated if shorter than the command) under the
    command, which starts after ``lead_s``; the command's RMS is ``snr_db`` above the scene's over the command's span. The two
    are scaled down together if the mixture would clip."""
    lead, tail = int(lead_s * SR), int(tail_s * SR)
    n = max(len(scene), lead + len(command) + tail)     # all of the scene: its labels describe all of it
    bed = np.tile(scene, -(-n // max(len(scene), 1)))[:n].astype(np.float32)
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-9  # noqa: E731
    scene_gain = rms(command) / (rms(bed[lead:lead + len(command)]) * 10 ** (snr_db / 20))
    placed = np.zeros(n, np.float32)
    placed[lead:lead + len(command)] = command
    out = placed + scene_gain * bed
    peak = float(np.max(np.abs(out))) if n else 0.0
    command_gain = 1.0
    if peak > 0.99:
        command_gain, scene_gain = 0.99 / peak, scene_gain * 0.99 / peak
        out = out * (0.99 / peak)
    return out.astype(np.float32), command_gain, scene_gain


def mixed_scene(seg: Segment, scene_audio: np.ndarray, voice: Voice, snr_db: float = 5.0
                ) -> tuple[Example, list[np.ndarray]] | None:
    """A spoken question about the segment's scene, mixed over it; None when its labels answer none."""
    questions = load_questions(section="scene")
    topics = [t for t in sorted(questions) if answer(t, seg.labels)]
    if not topics:
        return None
    topic = choose(topics, f"{seg.id}/scene")
    q = choose(questions[topic], f"{seg.id}/scene/{topic}")
    question = q.text
    reply, label = answer(topic, seg.labels)
    audio, _, _ = mix(speak(question, voice), scene_audio, snr_db)
    if len(audio) > MAX_S * SR:
        audio = audio[: int(MAX_S * SR)]
    template = f"{q.id}+{voice.id}"
    ex = Example(id=example_id("sft", "mixed_scene", [seg.id], template), stage="sft", task="mixed_scene",
                 audio=[AudioRef("audio0.flac", seg.id, round(len(audio) / SR, 3))], template=template,
                 messages=[{"role": "user", "content": [{"type": "audio", "audio": 0}]},
                           {"role": "assistant", "content": [{"type": "text", "text": reply}]}],
                 provenance={"segments": [seg.id], "labels_used": [label], "question": question,
                             "snr_db": snr_db, "voice": voice.id,
                             "license": [seg.source.license] if seg.source.license else []})
    return ex, [audio]


def layered_scene(sound: Segment, sound_audio: np.ndarray, talk: Segment, talk_audio: np.ndarray, voice: Voice,
                  snr_db: float = 5.0) -> tuple[Example, list[np.ndarray]] | None:
    """A spoken question over a sound-event segment and a multi-speaker segment at equal level, answered from
    the sound's events and the talk's speaker count; None when either lacks them."""
    names = list(dict.fromkeys(e.label.lower() for e in sorted(sound.labels.events, key=lambda e: -e.score)
                               if e.label != "Speech"))
    s = talk.labels.speakers
    if not names or s is None or s.count < 2:
        return None
    n = max(len(sound_audio), len(talk_audio))
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-9  # noqa: E731
    bed = np.zeros(n, np.float32)
    bed[:len(talk_audio)] += talk_audio
    bed[:len(sound_audio)] += sound_audio * (rms(talk_audio) / rms(sound_audio))
    key = f"{sound.id}+{talk.id}"
    q = choose(load_questions(section="scene")["events_and_speakers"], f"{key}/scene")
    reply = f"I can hear {join_words(names[:3])}, while {s.count} people are talking."
    audio, _, _ = mix(speak(q.text, voice), bed, snr_db)
    audio = audio[: int(MAX_S * SR)]
    template = f"{q.id}+{voice.id}"
    ex = Example(id=example_id("sft", "mixed_scene", [sound.id, talk.id], template), stage="sft", task="mixed_scene",
                 audio=[AudioRef("audio0.flac", key, round(len(audio) / SR, 3))], template=template,
                 messages=[{"role": "user", "content": [{"type": "audio", "audio": 0}]},
                           {"role": "assistant", "content": [{"type": "text", "text": reply}]}],
                 provenance={"segments": [sound.id, talk.id], "labels_used": ["events", "speakers"],
                             "question": q.text, "snr_db": snr_db, "voice": voice.id,
                             "license": sorted({x.source.license for x in (sound, talk) if x.source.license})})
    return ex, [audio]


def ignored_instruction_pair(item: dict[str, str], other: dict[str, str], voice: Voice, audio: np.ndarray) -> Example:
    """DPO on a spoken instruction: chosen answers it, rejected answers ``other`` (the command ignored)."""
    source = f"tts-{item['id']}-{voice.id}"
    return Example(id=example_id("dpo", "voice_chat", [source], voice.id, salt=other["id"]), stage="dpo",
                   task="voice_chat", audio=[AudioRef("audio0.flac", source, round(len(audio) / SR, 3))],
                   template=voice.id, messages=[{"role": "user", "content": [{"type": "audio", "audio": 0}]}],
                   chosen=item["answer"], rejected=other["answer"], rejected_kind="ignored_instruction",
                   score={"chosen": 1.0, "rejected": 0.0, "by": "instruction set"},
                   provenance={"segments": [], "instruction": item["id"], "answers_instead": other["id"],
                               "voice": voice.id, "labels_used": []})
