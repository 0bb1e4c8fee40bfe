"""The memory plan against what the real architecture holds on CPU: parameter, gradient, optimiser and
reference bytes exactly, activations (what autograd saves) within 20 %; and a plan over the GPU's memory
stops the run before any work, naming settings that fit."""

import copy

import pytest
import torch

from trainer import lora
from trainer.config import DEFAULT_TRAIN, TrainConfig
from trainer.memory import DoesNotFit, check, model_shape, plan, saved_bytes
from trainer.model import PRESETS, STAND_IN, audio_tokens, build_model, train_tokenizer
from trainer.recipe import set_trainable

TEXTS = ["the birch canoe slid on the smooth planks", "glue the sheet to the dark blue background"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, 1000)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("stage,lora_r", [("sft", 0), ("dpo", 0), ("sft", 4)])
def test_parameters_gradients_optimizer_and_reference_are_the_bytes_the_model_holds(tokenizer, stage, lora_r):
    cfg = TrainConfig(stage=stage, preset="tiny", model_dir="", lora_r=lora_r)
    model = build_model(PRESETS["tiny"], tokenizer)
    shape = model_shape(cfg, model.config)
    want = plan(shape, cfg, 1, "none")
    ref = copy.deepcopy(model).requires_grad_(False) if stage == "dpo" and not lora_r else None
    if lora_r:
        model = lora.attach(model, list(DEFAULT_TRAIN[stage]), lora_r, 0.0, 0.0)
    else:
        set_trainable(model, DEFAULT_TRAIN[stage])
    model.float()
    params = [p for p in model.parameters() if p.requires_grad]
    assert shape.trainable == sum(p.numel() for p in params) < shape.params
    opt = torch.optim.AdamW(params, lr=1e-3)
    inputs = _inputs(model, 160, 1, PRESETS["tiny"])            # a clip, so the projector has a gradient too
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    opt.step()
    assert want.parameters == _nbytes(model.parameters())
    assert want.gradients == _nbytes(p.grad for p in params)
    assert want.optimizer == _nbytes(v for s in opt.state.values() for k, v in s.items() if k != "step")
    assert want.reference == (_nbytes(ref.parameters()) if ref is not None else 0)


def _inputs(model, tokens: int, clips: int, preset) -> dict:
    """One sequence of ``tokens`` whose first ones are ``clips`` clips of the whole window."""
    ids = torch.randint(10, 200, (1, tokens))
    ids[0, : clips * audio_tokens(preset.chunk_s * 16000, preset.chunk_s)] = model.config.audio_token_index
    frames = preset.chunk_s * 100
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    if clips:
        inputs.update(input_features=torch.randn(clips, preset.num_mel_bins, frames),
                      feature_attention_mask=torch.ones(clips, frames, dtype=torch.long))
    return inputs


def _saved_bytes(model, tokens: int, clips: int, preset) -> int:
    """What autograd saves for backward in one training forward (the parameters themselves left out)."""
    mine = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in mine:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    inputs = _inputs(model, tokens, clips, preset)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(**inputs).logits.float()
        torch.nn.functional.cross_entropy(logits[0, :-1], inputs["input_ids"][0, 1:])
    return sum(seen.values())


@pytest.mark.parametrize("preset,tokens,clips,checkpointing", [
    (PRESETS["tiny"], 512, 1, False), (PRESETS["tiny"], 1024, 4, False), (STAND_IN, 2048, 2, False),
    (STAND_IN, 2048, 1, True), (STAND_IN, 1024, 0, False)])
def test_activations_are_what_autograd_saves(tokenizer, preset, tokens, clips, checkpointing):
    model = build_model(preset, tokenizer).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    shape = model_shape(TrainConfig(stage="sft"), model.config)
    measured = _saved_bytes(model, tokens, clips, preset)
    planned = saved_bytes(shape, tokens, clips, bf16=False, checkpointing=checkpointing)
    assert 0.8 < planned / measured < 1.2, (planned, measured)


def test_a_plan_over_the_gpu_stops_the_run_and_names_what_fits(capsys):
    small = TrainConfig(stage="sft", preset="small", max_tokens=4096, gpu_memory_gb=1.0)
    with pytest.raises(DoesNotFit) as e:
        check(small)
    text = str(e.value)
    assert "sft needs" in text and "of its 1 GB" in text and "gradient_checkpointing=true" in text, text
    assert "max_tokens=" in text and "num_workers=" not in text     # sharding does not shrink activations
    fits = check(TrainConfig(stage="sft", preset="small", max_tokens=4096, gpu_memory_gb=80.0))
    assert fits.total < 0.9 * 80e9 and "memory plan (none, 1 worker(s))" in capsys.readouterr().out
    sharded = plan(model_shape(small), small, 4, "fsdp")
    whole = plan(model_shape(small), small, 1, "none")
    assert sharded.optimizer * 4 == whole.optimizer and sharded.activations == whole.activations
