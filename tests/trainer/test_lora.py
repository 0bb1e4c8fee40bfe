"""LoRA (``trainer/lora.py``) on a stand-in of Qwen2-Audio-7B-Instruct's architecture: only the adapters
train, the merged export gives the unmerged model's outputs, and with the adapters disabled the model is the
checkpoint it started from (DPO's reference, with no second copy held)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.layout import corpus_texts, stage_shards
from trainer.model import load_pretrained, stand_in_checkpoint


@pytest.fixture(scope="module")
def base(lid_examples, tmp_path_factory):
    return stand_in_checkpoint(str(tmp_path_factory.mktemp("stand_in")), list(corpus_texts(str(lid_examples))))


def _batch(lid_examples, processor, n=3):
    from trainer.data import Encoder, collate, read_all

    enc = Encoder.for_processor(processor)
    items = [enc.encode(ex, a) for ex, a in list(read_all(stage_shards(str(lid_examples), "sft", held_out=True)))[:n]]
    batch = collate(items, processor.tokenizer.pad_token_id, processor.feature_extractor)
    return {k: v for k, v in batch.items() if k != "labels"}


def test_the_merged_export_answers_as_the_adapters_do(lid_examples, base, tmp_path):
    from peft import PeftModel

    from trainer import lora
    from trainer.config import TrainConfig
    from trainer.recipe import train_loop

    cfg = TrainConfig(examples=str(lid_examples), output=str(tmp_path), stage="sft", model_dir=base, lora_r=4,
                      launcher="local", max_steps=3, lr=5e-3, eval_max_examples=4, max_tokens=3000)
    train_loop(cfg)
    final = tmp_path / "sft" / "final"
    merged, processor = load_pretrained(str(final))
    batch = _batch(lid_examples, processor)
    adapted = PeftModel.from_pretrained(load_pretrained(base)[0], str(final / "adapter")).eval()
    start = load_pretrained(base)[0].eval()
    with torch.no_grad():
        out, ref, plain = adapted(**batch).logits, start(**batch).logits, merged.eval()(**batch).logits
    assert (out - ref).abs().max() > 1e-3                       # training moved the model
    assert torch.allclose(plain, out, atol=1e-5)                # merged = base + adapters
    with lora.reference(adapted):
        assert torch.equal(adapted(**batch).logits, ref)       # adapters off: the starting checkpoint exactly
    config = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base and config["r"] == 4
    assert not any("lora" in k for k in merged.state_dict())    # a plain transformers model


def test_lora_dpo_holds_no_reference_model_and_starts_at_zero_margin(lid_examples, base, tmp_path):
    from trainer.config import TrainConfig
    from trainer.parallel import Dist
    from trainer.data import Encoder, SkipCounter
    from trainer.loader import micro_batches
    from trainer.recipe import setup, train_step

    cfg = TrainConfig(examples=str(lid_examples), output=str(tmp_path), stage="dpo", model_dir=base, lora_r=4,
                      launcher="local", max_steps=3, keep_best=False, rpo_alpha=0.0, max_tokens=3000, lr=5e-3)
    s = setup(cfg, Dist())
    assert s.ref is None
    frozen = {k: v.clone() for k, v in s.model.named_parameters() if not v.requires_grad}
    batches = micro_batches(cfg, Encoder.for_processor(s.processor), s.dist, s.consumed["positions"], 0,
                            s.processor.tokenizer.pad_token_id, s.fe, SkipCounter())
    first = train_step(s, [next(batches)])
    # At step 1 the policy is its reference: every reward margin 0, the loss log 2.
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6) and first["loss"] == pytest.approx(0.6931, abs=1e-3)
    train_step(s, [next(batches)])                             # (the first step's learning rate is 0: warm-up)
    third = train_step(s, [next(batches)])
    assert abs(third["reward_margin"]) > 1e-4                  # the adapters moved the policy off its reference
    assert all(torch.equal(v, dict(s.model.named_parameters())[k]) for k, v in frozen.items())


def test_train_all_on_a_checkpoint_with_lora(lid_examples, base, tmp_path):
    """``audiomill train-all model_dir=… lora_r=…``: every stage trains adapters and exports them merged."""
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "train-all", str(lid_examples), str(out),
                          f"model_dir={base}", "lora_r=4", "launcher=local", "max_steps=2", "max_tokens=3000",
                          "eval_max_examples=4"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for stage in ("pretrain", "sft", "dpo"):
        assert (out / stage / "final" / "adapter" / "adapter_model.safetensors").exists()
        assert json.loads((out / stage / "eval.json").read_text())["eval"]["examples"] == 4
    assert "LoRA r=4 on projector, lm" in run.stdout
    sft_base = json.loads((out / "dpo" / "final" / "adapter" / "adapter_config.json").read_text())
    assert sft_base["base_model_name_or_path"].endswith(("sft/best", "sft/final"))


@pytest.mark.slow
def test_train_all_on_a_checkpoint_fully(lid_examples, base, tmp_path):
    """The same checkpoint fine-tuned in full: every stage's export is a plain checkpoint with no adapters,
    carrying the checkpoint's own chat template."""
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "train-all", str(lid_examples), str(out),
                          f"model_dir={base}", "launcher=local", "max_steps=2", "max_tokens=3000",
                          "eval_max_examples=4"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    template = (Path(base) / "chat_template.jinja").read_text()
    assert "You are a helpful assistant." in template
    for stage in ("pretrain", "sft", "dpo"):
        final = out / stage / "final"
        assert (final / "model.safetensors").exists() and not (final / "adapter").exists()
        assert json.loads((out / stage / "eval.json").read_text())["eval"]["examples"] == 4
        assert (final / "chat_template.jinja").read_text() == template
