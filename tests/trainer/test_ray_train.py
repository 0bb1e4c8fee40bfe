"""The same loop under Ray Train: TorchTrainer with 2 CPU workers over gloo, with DDP and with FSDP2."""

import dataclasses
import json
import shutil

import pytest
import torch

from trainer.config import TrainConfig
from trainer.launch import run_stage
from pipelines.demo_train import build_language_id

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "pretrain" / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}   # a resumed run rewrites the steps after its checkpoint


def _weights(final) -> dict[str, torch.Tensor]:
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(str(final)).state_dict()


def test_ddp_and_fsdp_train_alike_and_fsdp_resumes(tmp_path, ray_cluster):
    build_language_id(tmp_path / "ex")
    # (two micro-batches a step: each step's gradients are synced on its second only, in both modes)
    base = dict(examples=str(tmp_path / "ex"), stage="pretrain", launcher="ray", num_workers=2, max_steps=6,
                checkpoint_every=3, max_tokens=600, grad_accum=2)

    ddp = run_stage(TrainConfig(output=str(tmp_path / "ddp"), parallel="ddp", keep_checkpoints=1, **base))
    assert ddp["steps"] == 6 and ddp["eval"]["examples"] == 16
    # keep_checkpoints=1: of steps 3 and 6 only the last stays, in our folder and in Ray Train's copies
    assert [p.name for p in (tmp_path / "ddp" / "pretrain" / "checkpoints").iterdir()] == ["step-0000006"]
    assert len([p for p in (tmp_path / "ddp" / "ray").rglob("checkpoint_*") if p.is_dir()]) == 1
    fsdp = run_stage(TrainConfig(output=str(tmp_path / "fsdp"), parallel="fsdp", **base))
    assert fsdp["steps"] == 6

    # Sharding changes where the arithmetic happens, not its result: same loss curve, same weights.
    a, b = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert sorted(a) == list(range(1, 7)) and all(r > 0 for r in a.values())
    assert a[6] < a[1]
    assert b == pytest.approx(a, rel=1e-5)
    wa, wb = _weights(tmp_path / "ddp" / "pretrain" / "final"), _weights(tmp_path / "fsdp" / "pretrain" / "final")
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5

    # A checkpoint written under FSDP holds full tensors: resuming from step 3 (under FSDP again) gives
    # the uninterrupted run's steps 4–6.
    resumed = tmp_path / "resumed" / "pretrain" / "checkpoints"
    shutil.copytree(tmp_path / "fsdp" / "pretrain" / "checkpoints" / "step-0000003", resumed / "step-0000003")
    run_stage(TrainConfig(output=str(tmp_path / "resumed"), parallel="fsdp", **base))
    c = _losses(tmp_path / "resumed")
    assert sorted(c) == [4, 5, 6]
    assert c == pytest.approx({s: b[s] for s in (4, 5, 6)}, rel=1e-5)
    state = torch.load(resumed / "step-0000003" / "state.pt", weights_only=True)
    assert state["model"]["model.audio_tower.conv1.weight"].shape == wa["model.audio_tower.conv1.weight"].shape


def test_fsdp_bf16_mixed_precision_pretrain_then_dpo(tmp_path, ray_cluster, monkeypatch):
    """The large-model recipe on the tiny preset: FSDP, bf16 compute with fp32 master weights and fp32
    gradient reduction, gradient checkpointing; the export is bf16. DPO then starts from that bf16
    export, with its frozen reference sharded too."""
    build_language_id(tmp_path / "ex")
    monkeypatch.chdir(tmp_path)   # relative paths, as a user types them: Ray Train workers run elsewhere
    cfg = TrainConfig(examples="ex", output="out", stage="pretrain", launcher="ray",
                      num_workers=2, parallel="fsdp", bf16=True, gradient_checkpointing=True, max_steps=4,
                      checkpoint_every=2, max_tokens=600)
    result = run_stage(cfg)
    assert result["steps"] == 4 and result["eval"]["examples"] == 16 and result["parallel"] == "fsdp"
    losses = _losses(tmp_path / "out")
    assert sorted(losses) == [1, 2, 3, 4] and losses[4] < losses[1]
    state = torch.load(tmp_path / "out" / "pretrain" / "checkpoints" / "step-0000002" / "state.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values())        # master weights
    assert all(v["exp_avg"].dtype == torch.float32 for v in state["optimizer"]["state"].values())
    assert json.loads((tmp_path / "out" / "pretrain" / "final" / "config.json").read_text())["dtype"] == "bfloat16"

    # The large preset's path: a local HF-format checkpoint, FSDP chosen by parallel=auto.
    dpo = run_stage(dataclasses.replace(cfg, stage="dpo", preset="qwen2-audio-7b", parallel="auto",
                                        model_dir="out/pretrain/final", max_steps=2, rpo_alpha=0.0))
    assert dpo["parallel"] == "fsdp" and dpo["workers"] == 2 and dpo["bf16"]
    assert dpo["steps"] == 2 and dpo["eval"]["examples"] == 16 and 0.0 <= dpo["eval"]["reward_accuracy"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "out" / "dpo" / "train_log.jsonl").read_text().splitlines()]
    # Step 1: the policy equals its reference, so plain DPO's loss is log 2 (bf16 rounding aside).
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=2e-3)
