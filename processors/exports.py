"""Example records → the row formats other trainers read, with audio as file paths.

- ms-swift (its standard format): ``{"messages": [{"role", "content"}], "audios": [path]}``, an ``<audio>``
  tag in the user text per audio, DPO rows with ``rejected_response`` beside the chosen last turn.
- LLaMA-Factory (sharegpt): ``{"conversations": [{"from": "human"|"gpt", "value"}], "audios": [path]}``,
  ``<audio>`` tags labelled as below; DPO rows end on a human turn and carry ``chosen`` / ``rejected`` messages; the
  ``dataset_info.json`` entry says so (``formatting: sharegpt``, ``ranking`` for DPO, the ``audios`` column).

Pretraining examples become one user turn (audio + prompt) and one assistant turn (target) in both: neither
trainer has an audio pretraining format of its own.

Which template each trainer applies to Qwen2-Audio (``TEMPLATES``), and how the rows are written so that
it renders them as Qwen2-Audio-Instruct's own chat template does (a system turn "You are a helpful
assistant.", "Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\\n" before each audio, then the text):
- ms-swift's ``qwen2_audio`` template replaces each ``<audio>`` tag with "Audio N: …\\n" itself and adds the
  same system turn: the rows carry bare tags.
- LLaMA-Factory's ``qwen2_audio`` template (ChatML with the same default system) replaces a tag with the
  audio span alone: the rows carry the label around it, "Audio N: <audio>\\n".
"""

from __future__ import annotations

from typing import Any

AUDIO_TAG = "<audio>"
TEMPLATES = {"ms-swift": "qwen2_audio", "llama-factory": "qwen2_audio"}   # --template / template:


def turns(rec: dict[str, Any], labelled: bool = False) -> list[tuple[str, str]]:
    """(role, text) with an <audio> tag where each audio sits (``labelled``: "Audio N: <audio>\\n", numbered
    through the conversation); DPO records stop at the last user turn."""
    n = 0

    def tag() -> str:
        nonlocal n
        n += 1
        return f"Audio {n}: {AUDIO_TAG}\n" if labelled else AUDIO_TAG

    if rec["stage"] == "pretrain":
        return [("user", "".join(tag() for _ in rec["audio"]) + rec["prompt"]), ("assistant", rec["target"])]
    out = []
    for m in rec["messages"]:
        text = "".join(tag() if c["type"] == "audio" else c["text"] for c in m["content"])
        out.append((m["role"], text))
    return out


def swift_row(rec: dict[str, Any], audios: list[str]) -> dict[str, Any]:
    messages = [{"role": r, "content": t} for r, t in turns(rec)]
    row: dict[str, Any] = {"messages": messages, "audios": audios}
    if rec["stage"] == "dpo":
        row["messages"] = messages + [{"role": "assistant", "content": rec["chosen"]}]
        row["rejected_response"] = rec["rejected"]
    return row


def llama_factory_row(rec: dict[str, Any], audios: list[str]) -> dict[str, Any]:
    conv = [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in turns(rec, labelled=True)]
    row: dict[str, Any] = {"conversations": conv, "audios": audios}
    if rec["stage"] == "dpo":
        row["chosen"] = {"from": "gpt", "value": rec["chosen"]}
        row["rejected"] = {"from": "gpt", "value": rec["rejected"]}
    return row


def llama_factory_entry(file_name: str, ranking: bool) -> dict[str, Any]:
    columns = {"messages": "conversations", "audios": "audios"}
    if ranking:
        columns.update(chosen="chosen", rejected="rejected")
    return {"file_name": file_name, "formatting": "sharegpt", "ranking": ranking, "columns": columns}
