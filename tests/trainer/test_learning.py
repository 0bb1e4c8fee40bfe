"""Proof that it learns: spoken-language ID on held-out TTS words (4 languages: chance 0.25), tiny model,
pretrain → SFT → DPO on CPU (the training demo's recipe); then the final export loads with plain
transformers and answers."""

import json

import pytest

from processors.tts import espeak
from trainer.demo import WORDS, answer, build_language_id, train

pytestmark = pytest.mark.slow


def test_pretrain_sft_dpo_learns_language_id(tmp_path):
    build_language_id(tmp_path / "ex")
    results = train(tmp_path / "ex", tmp_path / "out", launcher="local")
    pre, sft, dpo = (results[s]["eval"] for s in ("pretrain", "sft", "dpo"))
    print(json.dumps({"pretrain": pre["tasks"]["lid"], "sft": sft["tasks"]["lid"], "dpo": dpo}, indent=1))
    assert sft["tasks"]["lid"]["chance"] == 0.25
    assert sft["tasks"]["lid"]["accuracy"] >= 0.5, sft
    assert dpo["reward_accuracy"] > 0.5 and dpo["chosen_minus_rejected_logp_shift"] > 0, dpo
    reply = answer(tmp_path / "out" / "dpo" / "final", espeak(WORDS["french"][1][-1], "fr"))   # a held-out word
    assert reply in WORDS, reply
