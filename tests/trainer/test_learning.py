"""Proof that it learns: spoken-language ID on held-out TTS words (4 languages: chance 0.25), tiny model,
pretrain → SFT → DPO on CPU; then the final export loads with plain transformers and answers."""

import dataclasses
import json

import pytest

from trainer.config import TrainConfig
from trainer.recipe import run_stage
from tests.trainer.factory import QUESTION, WORDS, build_language_id

pytestmark = pytest.mark.slow


def test_pretrain_sft_dpo_learns_language_id(tmp_path):
    build_language_id(tmp_path / "ex")
    out = tmp_path / "out"
    cfg = TrainConfig(examples=str(tmp_path / "ex"), output=str(out), launcher="local", max_steps=0,
                      max_tokens=2000)
    steps = {"pretrain": 500, "sft": 150, "dpo": 60}
    results = {}
    model_dir = ""
    for stage, n in steps.items():
        results[stage] = run_stage(dataclasses.replace(cfg, stage=stage, max_steps=n, model_dir=model_dir))
        model_dir = str(out / stage / "final")
    pre, sft, dpo = (results[s]["eval"] for s in ("pretrain", "sft", "dpo"))
    print(json.dumps({"pretrain": pre["tasks"]["lid"], "sft": sft["tasks"]["lid"], "dpo": dpo}, indent=1))
    assert sft["tasks"]["lid"]["chance"] == 0.25
    assert sft["tasks"]["lid"]["accuracy"] >= 0.5, sft
    assert dpo["reward_accuracy"] > 0.5 and dpo["chosen_minus_rejected_logp_shift"] > 0, dpo
    _answer_with_plain_transformers(out / "dpo" / "final")


def _answer_with_plain_transformers(path):
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    from tests.factories import tts

    processor = Qwen2AudioProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path)
    audio = tts(WORDS["french"][1][-1], "fr")       # a held-out word
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": 0}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], audio=[audio], sampling_rate=16000, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert answer in WORDS, answer
