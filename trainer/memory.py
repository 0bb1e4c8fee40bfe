"""The memory plan: what one GPU holds while a stage trains, worked out from the model's shape and the
settings before any GPU work, so a run that cannot fit stops at once and names settings that would.

The model's shape comes from its config alone: the model is built on PyTorch's ``meta`` device (no weights,
no memory), frozen or given LoRA adapters as the stage will be, and counted. Bytes per GPU:

- **parameters**: fp32 master weights (the recipe's ``model.float()``), 1/world of them under FSDP, which also
  gathers two layers at a time in the compute dtype (the one running and the one prefetched). Under DDP or
  in one process, bf16 autocast keeps a bf16 copy of each trainable weight, and DDP its gradient buckets.
- **gradients**: fp32, one per trainable parameter; 1/world under FSDP, except with ``grad_accum`` > 1,
  where they stay unsharded until the step's last micro-batch syncs them (``parallel.grad_sync``).
- **optimizer**: AdamW's two fp32 moments per trainable parameter; 1/world under FSDP.
- **reference**: DPO's frozen copy of the model (full fine-tuning; LoRA's reference is the same model with
  its adapters off): fp32 and sharded under FSDP, else in the dtype it was loaded in.
- **activations**: what autograd saves for backward in one micro-batch of ``max_tokens`` (twice that for a
  DPO pair batch), the batch full of clips of the whole audio window (each clip costs the encoder a whole
  window whatever its length). Per LM token and layer about 12.5 × hidden + 2 × the K/V width + 3 × ffn
  values; per encoder position and layer 12 × d_model + 2 × ffn; the conv front end 6 × d_model per
  position; the logits and the loss's log-softmax in fp32. With gradient checkpointing each layer keeps
  only its input, and one layer's whole set is rebuilt during its backward. These counts were read off the
  tensors autograd saves in the real architecture (``tests/trainer/test_memory.py`` holds the plan to them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

GB = 1e9


@dataclasses.dataclass(frozen=True)
class ModelShape:
    params: int                # every parameter
    trainable: int             # those the optimiser updates (LoRA: the adapters)
    largest_unit: int          # the parameters of the largest layer FSDP gathers at once
    lm_layers: int
    hidden: int
    kv_dim: int                # key (and value) width: kv heads × head size
    ffn: int
    vocab: int
    encoder_layers: int
    d_model: int
    encoder_ffn: int
    positions: int             # encoder positions per clip (after the conv front end): 50 a second of window
    audio_tokens: int          # LM tokens of one clip of the whole window: 25 a second


def model_config(cfg) -> Any:
    """The Qwen2AudioConfig the stage will train: ``model_dir``'s, else the preset's."""
    if cfg.model_dir:
        from transformers import Qwen2AudioConfig

        return Qwen2AudioConfig.from_pretrained(cfg.model_dir)
    from trainer.model import PRESETS, preset_config

    preset = PRESETS[cfg.preset]
    return preset_config(preset, cfg.vocab_size or preset.vocab_size)


def model_shape(cfg, config=None) -> ModelShape:
    """The shape of ``cfg``'s model as its stage trains it, counted on the meta device."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    from trainer import lora
    from trainer.parallel import shard_units
    from trainer.recipe import set_trainable

    config = config or model_config(cfg)
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    modules = cfg.modules(fresh=not cfg.model_dir)
    units = [sum(p.numel() for p in unit.parameters()) for unit in shard_units(model)]
    if cfg.lora_r:
        model = lora.attach(model, modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        trainable = lora.trainable(model)
    else:
        trainable = set_trainable(model, modules)
    text, audio = config.text_config, config.audio_config
    heads = text.num_attention_heads
    return ModelShape(params=sum(p.numel() for p in model.parameters()), trainable=trainable,
                      largest_unit=max(units), lm_layers=text.num_hidden_layers, hidden=text.hidden_size,
                      kv_dim=text.num_key_value_heads * (text.hidden_size // heads), ffn=text.intermediate_size,
                      vocab=text.vocab_size, encoder_layers=audio.encoder_layers, d_model=audio.d_model,
                      encoder_ffn=audio.encoder_ffn_dim, positions=audio.max_source_positions,
                      audio_tokens=audio.max_source_positions // 2)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    gradients: int
    optimizer: int
    reference: int
    activations: int
    mode: str
    world: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.reference + self.activations

    def table(self) -> str:
        """The five parts and the total, in GB (in MB for a plan under a GB, as the small presets' are)."""
        unit, size = ("GB", GB) if self.total >= GB else ("MB", 1e6)
        parts = [(k, getattr(self, k)) for k in ("parameters", "gradients", "optimizer", "reference", "activations")]
        return ", ".join(f"{k} {v / size:.2f}" for k, v in parts) + f"; total {self.total / size:.2f} {unit} per GPU"


def saved_bytes(shape: ModelShape, tokens: int, clips: int, bf16: bool, checkpointing: bool) -> int:
    """What autograd saves for backward in one forward of ``tokens`` LM tokens holding ``clips`` clips."""
    act = 2 if bf16 else 4
    head = shape.vocab * (8 + (2 if bf16 else 0))          # fp32 logits and log-softmax (and the bf16 logits)
    front = 6 * shape.d_model * shape.positions * clips * act
    if checkpointing:                                      # each layer's input only
        lm = tokens * shape.lm_layers * shape.hidden * act
        enc = clips * shape.positions * shape.encoder_layers * shape.d_model * act
    else:
        lm = tokens * shape.lm_layers * _lm_layer(shape) * act
        enc = clips * shape.positions * shape.encoder_layers * _encoder_layer(shape) * act
    return int(lm + enc + front + tokens * head)


def _lm_layer(shape: ModelShape) -> float:
    """Values one decoder layer saves per token."""
    return 12.5 * shape.hidden + 2 * shape.kv_dim + 3 * shape.ffn


def _encoder_layer(shape: ModelShape) -> float:
    """Values one encoder layer saves per position."""
    return 12 * shape.d_model + 2 * shape.encoder_ffn


def activation_bytes(shape: ModelShape, tokens: int, clips: int, bf16: bool, checkpointing: bool) -> int:
    """The activations' peak: what is saved, and with gradient checkpointing one decoder layer's and one
    encoder layer's whole set, rebuilt during their backward."""
    rebuilt = 0.0
    if checkpointing:
        rebuilt = (tokens * _lm_layer(shape) + clips * shape.positions * _encoder_layer(shape)) * (2 if bf16 else 4)
    return saved_bytes(shape, tokens, clips, bf16, checkpointing) + int(rebuilt)


def plan(shape: ModelShape, cfg, world: int, mode: str) -> MemoryPlan:
    """Bytes per GPU for ``cfg`` on ``world`` workers in ``mode`` (none | ddp | fsdp)."""
    shard = world if mode == "fsdp" else 1
    compute = 2 if cfg.bf16 else 4
    parameters = 4 * shape.params / shard
    if mode == "fsdp":
        parameters += 2 * shape.largest_unit * compute
    else:
        parameters += 2 * shape.trainable * cfg.bf16                             # autocast's weight copies
        parameters += 4 * shape.trainable * (mode == "ddp")                      # DDP's gradient buckets
    gradients = 4 * shape.trainable / (1 if mode == "fsdp" and cfg.grad_accum > 1 else shard)
    optimizer = 8 * shape.trainable / shard
    reference = 0.0
    if cfg.stage == "dpo" and not cfg.lora_r:
        loaded = 2 if cfg.bf16 and cfg.model_dir else 4
        if mode == "fsdp":
            reference = 4 * shape.params / world + 2 * shape.largest_unit * compute
        else:
            reference = loaded * shape.params
    sequences = 2 if cfg.stage == "dpo" else 1
    clips = max(1, cfg.max_tokens // shape.audio_tokens)
    activations = sequences * activation_bytes(shape, cfg.max_tokens, clips, cfg.bf16, cfg.gradient_checkpointing)
    return MemoryPlan(int(parameters), int(gradients), int(optimizer), int(reference), activations, mode, world)


def alternatives(shape_of, cfg, world: int, mode: str, budget: float) -> list[str]:
    """Settings that bring ``cfg``'s plan within ``budget`` bytes per GPU, each alone: LoRA, gradient
    checkpointing, fewer tokens, more FSDP workers. ``shape_of(cfg)`` gives a config's model shape."""
    from trainer.parallel import strategy

    out = []
    tries = [("lora_r=16 parallel=ddp", dict(lora_r=16, parallel="ddp"))] if not cfg.lora_r else []
    if not cfg.gradient_checkpointing:
        tries.append(("gradient_checkpointing=true", dict(gradient_checkpointing=True)))
    for label, change in tries:
        other = dataclasses.replace(cfg, **change)
        m = strategy(other.parallel, other.preset, world)
        if plan(shape_of(other), other, world, m).total <= budget:
            out.append(label)
    shape = shape_of(cfg)
    tokens = cfg.max_tokens // 2
    while tokens >= 64:
        if plan(shape, dataclasses.replace(cfg, max_tokens=tokens), world, mode).total <= budget:
            out.append(f"max_tokens={tokens}")
            break
        tokens //= 2
    if not cfg.lora_r:
        for n in (2, 4, 8, 16, 32, 64, 128, 256):
            if n > world and plan(shape, cfg, n, "fsdp").total <= budget:
                out.append(f"num_workers={n} parallel=fsdp")
                break
    return out


def gpu_budget(cfg) -> float | None:
    """Bytes one training GPU has: ``gpu_memory_gb``, else the first CUDA device this process sees (with
    ``use_gpu``), else None (no check)."""
    if cfg.gpu_memory_gb:
        return cfg.gpu_memory_gb * GB
    if cfg.use_gpu:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory)
    return None


class DoesNotFit(ValueError):
    """A stage's memory plan is over its GPUs' memory."""


def check(cfg, world: int | None = None) -> MemoryPlan:
    """The stage's plan on its workers, printed; raises ``DoesNotFit`` naming settings that fit when it is
    over the GPU's memory (``HEADROOM`` of it, for the allocator's own caching and fragmentation)."""
    from trainer.parallel import strategy

    world = world or (cfg.num_workers if cfg.launcher == "ray" else 1)
    mode = strategy(cfg.parallel, cfg.preset, world)
    shape = model_shape(cfg)
    p = plan(shape, cfg, world, mode)
    budget = gpu_budget(cfg)
    print(f"[audiomill] {cfg.stage}: memory plan ({mode}, {world} worker(s)): {p.table()}"
          + (f" (the GPU has {budget / GB:.0f} GB)" if budget else ""), flush=True)
    if budget is not None and p.total > HEADROOM * budget:
        # (only the LoRA alternative changes what trains, and so the shape)
        fits = alternatives(lambda other: shape if other.lora_r == cfg.lora_r else model_shape(other), cfg, world,
                            mode, HEADROOM * budget)
        raise DoesNotFit(f"{cfg.stage} needs {p.total / GB:.1f} GB per GPU, over {HEADROOM:.0%} of its "
                         f"{budget / GB:.0f} GB ({p.table()}); "
                         + ("each of these fits: " + "; ".join(fits) if fits else "no single setting here fits"))
    return p


HEADROOM = 0.9
