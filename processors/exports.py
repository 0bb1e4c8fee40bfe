"""Example records → the row formats other trainers read, with audio as file paths.

- ms-swift (its standard format): ``{"messages": [{"role", "content"}], "audios": [path]}``, an ``<audio>``
  tag in the user text per audio, DPO rows with ``rejected_response`` beside the chosen last turn.
- LLaMA-Factory (sharegpt): ``{"conversations": [{"from": "human"|"gpt", "value"}], "audios": [path]}``, the
  same ``<audio>`` tags; DPO rows end on a human turn and carry ``chosen`` / ``rejected`` messages; the
  ``dataset_info.json`` entry says so (``formatting: sharegpt``, ``ranking`` for DPO, the ``audios`` column).

Pretraining examples become one user turn (audio + prompt) and one assistant turn (target) in both: neither
trainer has an audio pretraining format of its own.
"""

from __future__ import annotations

from typing import Any

AUDIO_TAG = "<audio>"


def turns(rec: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) with an <audio> tag where each audio sits; DPO records stop at the last user turn."""
    if rec["stage"] == "pretrain":
        return [("user", AUDIO_TAG * len(rec["audio"]) + rec["prompt"]), ("assistant", rec["target"])]
    out = []
    for m in rec["messages"]:
        text = "".join(AUDIO_TAG if c["type"] == "audio" else c["text"] for c in m["content"])
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
    conv = [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in turns(rec)]
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
