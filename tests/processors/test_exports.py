"""The ms-swift and LLaMA-Factory rows, rendered as each trainer's ``qwen2_audio`` template renders them, give
the same token ids as the checkpoint's own chat template gives the record (through the trainer's encoder).

Neither trainer installs here without replacing the pinned torch and transformers, so their rendering is
restated from their code: ms-swift's ``Qwen2AudioTemplate`` (Qwen ChatML with the default system "You are a
helpful assistant."; ``replace_tag`` gives "Audio {index + 1}: <|audio_bos|><|AUDIO|><|audio_eos|>\\n" per
``<audio>``), and LLaMA-Factory's ``qwen2_audio`` template (the same ChatML and default system; its
``qwen2_audio`` plugin replaces ``<audio>`` with the audio span alone)."""

import numpy as np
import pytest

from processors.exports import AUDIO_TAG, llama_factory_row, swift_row
from schemas.example import AudioRef, Example, assistant_turn
from trainer.data import Encoder
from trainer.model import build_processor, train_tokenizer

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
SPAN = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def _chatml(turns: list[tuple[str, str]], tag: str) -> str:
    """Both trainers' ChatML: the default system turn, each turn closed by <|im_end|>\\n."""
    text, n = SYSTEM, 0
    for role, content in turns:
        while AUDIO_TAG in content:
            n += 1
            content = content.replace(AUDIO_TAG, tag.format(n=n), 1)
        text += f"<|im_start|>{role}\n{content}<|im_end|>\n"
    return text


def swift_text(row) -> str:
    return _chatml([(m["role"], m["content"]) for m in row["messages"]], "Audio {n}: " + SPAN + "\n")


def llama_factory_text(row, reply: str | None = None) -> str:
    conv = [("user" if c["from"] == "human" else "assistant", c["value"]) for c in row["conversations"]]
    return _chatml(conv + ([("assistant", reply)] if reply is not None else []), SPAN)


@pytest.fixture(scope="module")
def instruct():
    tok = train_tokenizer(["You are a helpful assistant. Audio compare the two which language english french "
                           "and then silence a dog barks"] * 20, 500)
    return build_processor(tok, chunk_s=30, num_mel_bins=128, chat_template=None)


def _ids(processor, text, audios):
    return processor(text=[text], audio=audios, sampling_rate=16000, return_tensors="pt")["input_ids"][0].tolist()


def _records():
    a = [AudioRef("audio0.flac", "s0", 1.0), AudioRef("audio1.flac", "s1", 2.0)]
    sft = Example(id="s", stage="sft", task="analysis", audio=a, messages=[
        {"role": "user", "content": [{"type": "audio", "audio": 0}, {"type": "audio", "audio": 1},
                                     {"type": "text", "text": "Compare the two."}]},
        assistant_turn("The first is french."),
        {"role": "user", "content": [{"type": "text", "text": "And then?"}]}, assistant_turn("Silence.")])
    dpo = Example(id="d", stage="dpo", task="lid", audio=a[:1], chosen="english", rejected="french", messages=[
        {"role": "user", "content": [{"type": "audio", "audio": 0}, {"type": "text", "text": "Which language?"}]}])
    return sft, dpo


def test_export_rows_render_to_the_checkpoints_ids(instruct):
    rng = np.random.default_rng(0)
    audios = [rng.normal(0, 0.1, 16000).astype(np.float32), rng.normal(0, 0.1, 32000).astype(np.float32)]
    enc = Encoder.for_processor(instruct)
    sft, dpo = _records()
    rec = sft.to_dict()
    want = enc.encode(sft, audios).input_ids
    assert _ids(instruct, swift_text(swift_row(rec, ["a.flac", "b.flac"])), audios) == want
    assert _ids(instruct, llama_factory_text(llama_factory_row(rec, ["a.flac", "b.flac"])), audios) == want
    pair = enc.encode(dpo, audios[:1])
    rec = dpo.to_dict()
    row = swift_row(rec, ["a.flac"])
    assert _ids(instruct, swift_text(row), audios[:1]) == pair.chosen.input_ids
    rejected = {**row, "messages": row["messages"][:-1] + [{"role": "assistant", "content": row["rejected_response"]}]}
    assert _ids(instruct, swift_text(rejected), audios[:1]) == pair.rejected.input_ids
    row = llama_factory_row(rec, ["a.flac"])
    assert _ids(instruct, llama_factory_text(row, row["chosen"]["value"]), audios[:1]) == pair.chosen.input_ids
    assert _ids(instruct, llama_factory_text(row, row["rejected"]["value"]), audios[:1]) == pair.rejected.input_ids
