"""Training configuration: one dataclass, mirrored in YAML, overridden with ``key=value``."""

from __future__ import annotations

import dataclasses
import os

from trainer.model import LARGE_PRESETS, PRESETS, checkpoint_problem

STAGES = ("pretrain", "sft", "dpo")
MODULES = ("encoder", "projector", "lm")
# What each stage trains by default (the Qwen-Audio recipe). A preset built from scratch has a random
# LM, so its pretrain stage trains the LM too.
DEFAULT_TRAIN = {"pretrain": ("encoder", "projector"), "sft": ("projector", "lm"), "dpo": ("projector", "lm")}
DEFAULT_STEPS = {"pretrain": 1000, "sft": 500, "dpo": 200}
DEFAULT_LR = {"pretrain": 1e-3, "sft": 5e-4, "dpo": 5e-5}
# Passes over the stage's training examples at most (0: no cap). DPO over-optimises when it sees its pairs
# many times: the policy moves away from what SFT taught while its reward accuracy still rises.
DEFAULT_EPOCHS = {"pretrain": 0.0, "sft": 0.0, "dpo": 1.0}
TRANSCRIPTION_TASKS = ("asr", "transcribe", "s2tt")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    examples: str = ""               # EXAMPLES_DIR: <stage>/*.tar for training, <stage>/eval/*.tar held out
    output: str = ""                 # OUTPUT_DIR: <stage>/final, <stage>/eval.json, <stage>/checkpoints
    stage: str = "pretrain"
    preset: str = "tiny"             # tiny | small | qwen2-audio-7b
    model_dir: str = ""              # start from this checkpoint ("" → a new model of the preset)
    chat_template: str = ""          # a Jinja file to train and serve with instead of the checkpoint's own template
    max_steps: int | None = None     # None → the stage's default; 0 → export and evaluate the starting model
    max_epochs: float | None = None  # at most this many passes over the examples (None → the stage's, 0 → no cap)
    stage_steps: dict[str, int] = dataclasses.field(default_factory=dict)   # train-all: steps per stage (over max_steps)
    lr: float = 0.0                  # 0 → the stage's default
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_tokens: int = 2048           # token budget of one micro-batch (audio tokens at 25/s + text)
    max_batch: int = 64
    grad_accum: int = 1
    train_modules: list[str] = dataclasses.field(default_factory=list)   # [] → the stage's default
    lora_r: int = 0                  # > 0: LoRA adapters of this rank on the train_modules instead of full fine-tuning
    lora_alpha: float = 0.0          # LoRA scale numerator (0 → 2 × lora_r)
    lora_dropout: float = 0.0
    task_weights: dict[str, float] = dataclasses.field(default_factory=dict)  # sampling weight per task
    beta: float = 0.1                # DPO
    rpo_alpha: float = 1.0           # DPO: weight of the chosen reply's per-token NLL (RPO); 0 → plain DPO
    seed: int = 0
    shuffle_buffer: int = 64
    loader_workers: int = 0          # DataLoader worker processes that decode, encode and collate (0 → in-process)
    checkpoint_every: int = 200
    keep_checkpoints: int = 2        # the newest step-N checkpoints kept, ours and Ray Train's copies; 0 → every one
    keep_best: bool = True           # score each checkpoint's export on the held-out set; keep the best in best/
    patience: int = 2                # keep_best: stop after this many held-out scores in a row below the best
    eval_max_examples: int = 200
    eval_holdout: float = 0.05       # no <stage>/eval/: this share held out, in groups by content (holdout.py)
    max_bad_fraction: float = 0.5    # stop when more of the data than this cannot be read
    eval_max_new_tokens: int = 32
    num_workers: int = 1             # Ray Train workers
    use_gpu: bool = False
    gpu_memory_gb: float = 0.0       # one training GPU's memory for the memory plan (0 → the first CUDA device's)
    bf16: bool = False               # bf16 compute (autocast, or FSDP's mixed precision), fp32 master weights
    parallel: str = "auto"           # ddp | fsdp over the Ray Train workers (auto → fsdp for large presets)
    gradient_checkpointing: bool = False
    launcher: str = "ray"            # ray (Ray Train TorchTrainer) | local (same loop, this process)
    vocab_size: int = 0              # 0 → the preset's

    def validate(self) -> list[str]:
        problems = []
        if not self.examples:
            problems.append("examples: an EXAMPLES_DIR is required")
        if not self.output:
            problems.append("output: an OUTPUT_DIR is required")
        if self.stage not in STAGES:
            problems.append(f"stage: {self.stage!r} is not one of {', '.join(STAGES)}")
        if self.preset not in PRESETS and self.preset not in LARGE_PRESETS:
            problems.append(f"preset: {self.preset!r} is not one of {', '.join([*PRESETS, *LARGE_PRESETS])}")
        if self.preset in LARGE_PRESETS and not self.model_dir:
            problems.append(f"model_dir: preset {self.preset} loads a local HF-format checkpoint; set model_dir")
        if self.model_dir:
            problem = checkpoint_problem(self.model_dir)
            if problem:
                problems.append(problem)
        if self.chat_template and not os.path.isfile(self.chat_template):
            problems.append(f"chat_template: {self.chat_template!r} is not a file (a Jinja chat template)")
        bad = [m for m in self.train_modules if m not in MODULES]
        if bad:
            problems.append(f"train_modules: {bad} not in {', '.join(MODULES)}")
        if self.lora_r < 0 or self.lora_alpha < 0 or not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_r, lora_alpha: must be ≥ 0 and lora_dropout in [0, 1), got "
                            f"{self.lora_r}, {self.lora_alpha}, {self.lora_dropout}")
        if self.lora_r and self.num_workers > 1 and (self.parallel == "fsdp" or (
                self.parallel == "auto" and self.preset in LARGE_PRESETS)):
            problems.append("lora_r: LoRA trains under DDP or in one process; set parallel=ddp (the adapters are "
                            "small, each worker holds the frozen model whole)")
        if self.parallel not in ("auto", "ddp", "fsdp"):
            problems.append(f"parallel: {self.parallel!r} is not one of auto, ddp, fsdp")
        if self.launcher not in ("ray", "local"):
            problems.append("launcher: ray or local")
        for name in ("max_tokens", "grad_accum", "num_workers", "max_batch", "checkpoint_every"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: must be > 0")
        if self.loader_workers < 0:
            problems.append("loader_workers: must be ≥ 0")
        if self.gpu_memory_gb < 0:
            problems.append("gpu_memory_gb: must be ≥ 0 (0: the first CUDA device's)")
        if self.keep_checkpoints < 0:
            problems.append("keep_checkpoints: must be ≥ 0 (0 keeps every one)")
        if self.max_epochs is not None and self.max_epochs < 0:
            problems.append(f"max_epochs: must be ≥ 0, got {self.max_epochs}")
        if self.patience < 0:
            problems.append(f"patience: must be ≥ 0, got {self.patience}")
        if self.rpo_alpha < 0:
            problems.append(f"rpo_alpha: must be ≥ 0, got {self.rpo_alpha}")
        if (self.max_steps is not None and self.max_steps < 0) or self.lr < 0:
            problems.append("max_steps and lr: must be ≥ 0")
        if not 0 <= self.eval_holdout < 1:
            problems.append(f"eval_holdout: must be in [0, 1), got {self.eval_holdout}")
        if not 0 < self.max_bad_fraction <= 1:
            problems.append(f"max_bad_fraction: must be in (0, 1], got {self.max_bad_fraction}")
        for stage, n in self.stage_steps.items():
            if stage not in STAGES:
                problems.append(f"stage_steps: {stage!r} is not one of {', '.join(STAGES)}")
            elif not isinstance(n, int) or isinstance(n, bool) or n < 0:
                problems.append(f"stage_steps.{stage}: must be a number of steps ≥ 0, got {n!r}")
        bad_weights = {k: v for k, v in self.task_weights.items() if v < 0}
        if bad_weights:
            problems.append(f"task_weights: must be ≥ 0, got {bad_weights}")
        return problems

    def steps(self) -> int:
        return DEFAULT_STEPS[self.stage] if self.max_steps is None else self.max_steps

    def epochs(self) -> float:
        return DEFAULT_EPOCHS[self.stage] if self.max_epochs is None else self.max_epochs

    def modules(self, fresh: bool) -> list[str]:
        """What the stage trains: ``train_modules``, else the stage's default (with the LM too when pretraining
        a model built here, whose LM starts random: ``fresh``)."""
        return self.train_modules or (list(DEFAULT_TRAIN[self.stage]) + (["lm"] if fresh and self.stage == "pretrain" else []))

    def learning_rate(self) -> float:
        return self.lr or DEFAULT_LR[self.stage]
