"""The example record (FORMAT.md, examples layer): one training example of one stage, self-contained —
the audio it needs travels in the same sample as ``KEY.audio{i}.flac``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

EXAMPLE_SCHEMA = "audiomill.example/1"
STAGES = ("pretrain", "sft", "dpo")


@dataclasses.dataclass(frozen=True)
class AudioRef:
    member: str            # "audio0.flac"
    segment_id: str
    duration_s: float


@dataclasses.dataclass(frozen=True)
class Example:
    """Pretrain examples carry ``prompt`` + ``target``; SFT and DPO carry ChatML ``messages`` (DPO adds
    ``chosen`` / ``rejected`` replies to the last user turn)."""

    id: str
    stage: str
    task: str
    audio: list[AudioRef]
    template: str = ""
    prompt: str = ""
    target: str = ""
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    chosen: str = ""
    rejected: str = ""
    rejected_kind: str = ""
    score: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {STAGES}")
        if self.stage == "pretrain" and not self.target:
            raise ValueError(f"{self.id}: a pretrain example needs a target")
        if self.stage in ("sft", "dpo") and not self.messages:
            raise ValueError(f"{self.id}: an {self.stage} example needs messages")
        if self.stage == "dpo" and not (self.chosen and self.rejected):
            raise ValueError(f"{self.id}: a dpo example needs chosen and rejected replies")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": EXAMPLE_SCHEMA, "id": self.id, "stage": self.stage, "task": self.task,
                             "audio": [dataclasses.asdict(a) for a in self.audio], "template": self.template,
                             "provenance": self.provenance}
        if self.stage == "pretrain":
            d.update(prompt=self.prompt, target=self.target)
        else:
            d["messages"] = self.messages
        if self.stage == "dpo":
            d.update(chosen=self.chosen, rejected=self.rejected, rejected_kind=self.rejected_kind, score=self.score)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        if d.get("schema") != EXAMPLE_SCHEMA:
            raise ValueError(f"not a {EXAMPLE_SCHEMA} record: schema={d.get('schema')!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields and k != "audio"}
        return cls(audio=[AudioRef(**a) for a in d["audio"]], **kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Example":
        return cls.from_dict(json.loads(text))


def example_id(stage: str, task: str, segment_ids: list[str], template: str, salt: str = "") -> str:
    """Deterministic: hash(stage, task, segment ids, template) → ``ex-`` + 16 hex."""
    key = "|".join([stage, task, ",".join(segment_ids), template, salt])
    return "ex-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def user_audio_turn(text: str, n_audio: int = 1) -> dict[str, Any]:
    """A ChatML user turn: the audios first, then the text."""
    content: list[dict[str, Any]] = [{"type": "audio", "audio": i} for i in range(n_audio)]
    return {"role": "user", "content": content + [{"type": "text", "text": text}]}


def assistant_turn(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}
