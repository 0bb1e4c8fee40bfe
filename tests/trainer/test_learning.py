"""Proof that it learns: spoken-language ID on held-out TTS words (4 languages: chance 0.25), tiny model,
pretrain → SFT → DPO on CPU (the training demo's recipe); then the final export, loaded by plain
transformers, names the language of held-out words correctly, not one answer for all."""

import json

import pytest

from processors.tts import espeak
from pipelines.demo_train import WORDS, answer, build_language_id, train

pytestmark = pytest.mark.slow


def test_pretrain_sft_dpo_learns_language_id(tmp_path):
    build_language_id(tmp_path / "ex", held_out=4)
    results = train(tmp_path / "ex", tmp_path / "out", launcher="local")
    pre, sft, dpo = (results[s]["eval"] for s in ("pretrain", "sft", "dpo"))
    print(json.dumps({"pretrain": pre["tasks"]["lid"], "sft": sft["tasks"]["lid"], "dpo": dpo}, indent=1))
    assert pre["tasks"]["lid"]["chance"] == sft["tasks"]["lid"]["chance"] == 0.25
    assert pre["tasks"]["lid"]["accuracy"] >= 0.4, pre
    assert sft["tasks"]["lid"]["accuracy"] >= 0.5, sft
    assert dpo["reward_accuracy"] > 0.5 and dpo["chosen_minus_rejected_logp_shift"] > 0, dpo
    # DPO does not cost what SFT taught: held-out generation after DPO as good as the SFT model's, give or
    # take one word (float rounding differs between CPUs; the over-optimised DPO lost a quarter of them).
    assert dpo["tasks_before"]["lid"]["accuracy"] == sft["tasks"]["lid"]["accuracy"]
    lid = dpo["tasks"]["lid"]
    assert lid["accuracy"] >= sft["tasks"]["lid"]["accuracy"] - 1 / lid["n"], dpo
    # The export through plain transformers, on every held-out word (never trained on).
    final = tmp_path / "out" / "dpo" / "final"
    replies = {(language, word): answer(final, espeak(word, code))
               for language, (code, words) in WORDS.items() for word in words[-4:]}
    print(replies)
    right = [language for (language, _), reply in replies.items() if reply == language]
    assert len(right) / len(replies) >= 0.5, replies
    assert len(set(right)) >= 3, replies          # right about most languages, not one answer for all
    assert set(replies.values()) <= set(WORDS), replies
