"""The trainer's memory plan (``trainer/memory.py``) for Qwen2-Audio-7B, from its published shape: what one
GPU holds in each setting of the README's "Train Qwen2-Audio-7B on a cluster". The model is counted on the
meta device: nothing is downloaded or allocated.

    .venv/bin/python bench/memory_plan.py
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import TrainConfig  # noqa: E402
from trainer.memory import GB, model_shape, plan  # noqa: E402


def qwen2_audio_7b():
    """Qwen2-Audio-7B's config.json shape: a Whisper-large-v3 encoder (32 layers of 1280, 128 mel bins, 30 s)
    and a Qwen-7B LM (32 layers of 4096, MLP 11008, 32 heads, vocabulary 156,032, untied head)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2Config

    enc = Qwen2AudioEncoderConfig(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20,
                                  encoder_ffn_dim=5120, d_model=1280, max_source_positions=1500)
    lm = Qwen2Config(vocab_size=156032, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
    return Qwen2AudioConfig(audio_config=enc, text_config=lm, tie_word_embeddings=False)


SETTINGS = [   # (what, GPUs, memory per GPU in GB, mode, config changes)
    ("full SFT, FSDP, bf16, gradient checkpointing", 8, 80, "fsdp", dict(stage="sft")),
    ("the same with grad_accum=4 (gradients unsharded until the step's last micro-batch)", 8, 80, "fsdp",
     dict(stage="sft", grad_accum=4)),
    ("full DPO (with its sharded reference), FSDP, bf16, gradient checkpointing", 8, 80, "fsdp", dict(stage="dpo")),
    ("full SFT, FSDP, on 4 × A10G", 4, 24, "fsdp", dict(stage="sft")),
    ("full SFT, FSDP, on 16 × A10G", 16, 24, "fsdp", dict(stage="sft")),
    ("LoRA r=16 SFT, one GPU, bf16, gradient checkpointing", 1, 80, "none", dict(stage="sft", lora_r=16)),
    ("LoRA r=16 SFT, one A10G, max_tokens=1024", 1, 24, "none", dict(stage="sft", lora_r=16, max_tokens=1024)),
    ("LoRA r=16 DPO, one GPU, bf16, gradient checkpointing", 1, 80, "none", dict(stage="dpo", lora_r=16)),
]


def main() -> int:
    config = qwen2_audio_7b()
    base = TrainConfig(preset="qwen2-audio-7b", model_dir="qwen2-audio-7b", bf16=True, gradient_checkpointing=True,
                       max_tokens=2048)
    print("| setting | GPUs × GB | parameters | gradients | optimizer | reference | activations | total per GPU | fits |")
    print("|---|---|---|---|---|---|---|---|---|")
    for what, gpus, gb, mode, change in SETTINGS:
        cfg = dataclasses.replace(base, num_workers=gpus, **change)
        shape = model_shape(cfg, config)
        p = plan(shape, cfg, gpus, mode)
        cells = [f"{v / GB:.1f}" for v in (p.parameters, p.gradients, p.optimizer, p.reference, p.activations)]
        fits = "yes" if p.total <= 0.9 * gb * GB else "no"
        print(f"| {what} | {gpus} × {gb} | " + " | ".join(cells) + f" | {p.total / GB:.1f} GB | {fits} |")
    shape = model_shape(dataclasses.replace(base, stage="sft"), config)
    print(f"\n{shape.params / 1e9:.2f} B parameters; SFT trains {shape.trainable / 1e9:.2f} B (projector and LM); "
          f"max_tokens={base.max_tokens} holds {max(1, base.max_tokens // shape.audio_tokens)} clip(s) of 30 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
