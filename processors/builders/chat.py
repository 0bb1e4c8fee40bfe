"""Voice chat and mixed scenes: SFT examples whose user turn is audio only.

- ``voice_chat``: an instruction from a JSONL set (``data/instructions.jsonl`` by default; lines of
  ``{"id", "instruction", "answer"}``) spoken by TTS; the assistant answers the request itself.
- ``mixed_scene``: a spoken question about the scene ("What sounds can you hear around me?") laid over a
  labelled segment at a set SNR; the answer comes from the segment's labels (``analysis.answer``).

TTS is configurable (``Voice``: espeak-ng with any of its voices, flite's English voices, or Piper's joe voice, each at a set rate).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from processors.builders.analysis import answer
from processors.builders.pretrain import choose
from schemas.example import AudioRef, Example, example_id
from schemas.segment import Segment

SR = 16000
MAX_S = 30.0
INSTRUCTIONS = Path(__file__).parent / "data" / "instructions.jsonl"
SCENE_QUESTIONS = {
    "events": ("What sounds can you hear around me?", "Tell me what is making that noise in the background.",
               "What is going on around me right now?"),
    "speakers": ("How many people are talking behind me?", "How many other voices can you hear?"),
    "language": ("Which language are the people near me speaking?", "What language is that in the background?"),
}


@dataclasses.dataclass(frozen=True)
class Voice:
    backend: str = "espeak"      # espeak | flite | piper
    name: str = "en-us"          # espeak-ng voice (language + variant: "en-us+f2"); flite: slt, kal, awb, rms; piper: joe
    rate: int = 160              # words per minute (piper: relative to its natural 160)

    @property
    def id(self) -> str:
        return f"{self.backend}:{self.name}@{self.rate}"


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
            if item["id"] in seen:
                raise ValueError(f"{path}:{n}: id {item['id']!r} repeats")
            seen.add(item["id"])
            out.append(item)
    return out


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
                 provenance={"segments": [], "instruction": item["id"], "voice": voice.id, "labels_used": []})
    return ex, [audio]


def mix(command: np.ndarray, scene: np.ndarray, snr_db: float, lead_s: float = 0.5,
        tail_s: float = 0.5) -> tuple[np.ndarray, float, float]:
    """(mixture, command gain, scene gain): the scene (repeated if short) under the command, which starts
    after ``lead_s``; the command's RMS is ``snr_db`` above the scene's over the command's span. The two
    are scaled down together if the mixture would clip."""
    lead, tail = int(lead_s * SR), int(tail_s * SR)
    n = lead + len(command) + tail
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
    topics = [t for t in SCENE_QUESTIONS if answer(t, seg.labels)]
    if not topics:
        return None
    topic = choose(topics, f"{seg.id}/scene")
    question = choose(SCENE_QUESTIONS[topic], f"{seg.id}/scene/{topic}")
    reply, label = answer(topic, seg.labels)
    audio, _, _ = mix(speak(question, voice), scene_audio, snr_db)
    if len(audio) > MAX_S * SR:
        audio = audio[: int(MAX_S * SR)]
    template = f"scene.{topic}.{SCENE_QUESTIONS[topic].index(question) + 1}+{voice.id}"
    ex = Example(id=example_id("sft", "mixed_scene", [seg.id], template), stage="sft", task="mixed_scene",
                 audio=[AudioRef("audio0.flac", seg.id, round(len(audio) / SR, 3))], template=template,
                 messages=[{"role": "user", "content": [{"type": "audio", "audio": 0}]},
                           {"role": "assistant", "content": [{"type": "text", "text": reply}]}],
                 provenance={"segments": [seg.id], "labels_used": [label], "question": question,
                             "snr_db": snr_db, "voice": voice.id,
                             "license": [seg.source.license] if seg.source.license else []})
    return ex, [audio]
