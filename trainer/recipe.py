"""The training recipe: one stage's Session and its loop, the same for pretrain, SFT and DPO.

``train_loop(cfg, dist)`` sets up the model (and DPO's reference) for DDP or FSDP, restores the newest
checkpoint, steps until the stage's step count or early stopping, and exports. Each stage leaves
``OUTPUT/<stage>/final`` (model + processor by ``save_pretrained``), ``best/`` (the export with the best
held-out score), ``eval.json`` and resumable checkpoints under ``checkpoints/``.

The parts: ``layout`` (where the examples are, checks before training), ``loader`` (the batched stream),
``steps`` (forward and backward), ``checkpoints``, ``scoring`` (held-out evaluation), ``console`` (what the
user sees) and ``launch`` (one stage on Ray Train or locally; pretrain → SFT → DPO).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import random
from typing import Any

import torch

from trainer import lora, parallel
from trainer.checkpoints import latest_checkpoint, remove_unfinished, save_checkpoint, resume_latest, _best_so_far
from trainer.config import TrainConfig
from trainer.console import _Progress, _Interrupt, _writer, _say, _report, CONSOLE
from trainer.data import Encoder, SkipCounter
from trainer.features import LogMel
from trainer.layout import corpus_texts
from trainer.loader import epoch_steps, micro_batches
from trainer.losses import DPOLoss
from trainer.model import PRESETS, build_model, build_processor, load_pretrained, train_tokenizer
from trainer.parallel import Dist, _core
from trainer.scoring import evaluate_export, held_out_score, held_out_tiebreak
from trainer.steps import Batch, lm_step, dpo_step


def load_or_build(cfg: TrainConfig) -> tuple[Any, Any, bool]:
    """(model, processor, fresh): from ``model_dir`` if set, else a new model of the preset with a
    tokenizer trained on the shards' text (deterministic, so every rank builds the same one). The processor
    carries the chat template examples are rendered with: ``chat_template``'s file, else the checkpoint's
    own, else the preset's; it is saved with every export."""
    if cfg.model_dir:
        dtype = torch.bfloat16 if cfg.bf16 else None
        model, processor = load_pretrained(cfg.model_dir, dtype=dtype)
        fresh = False
    else:
        preset = PRESETS[cfg.preset]
        tok = train_tokenizer(corpus_texts(cfg.examples, SkipCounter(cfg.max_bad_fraction)),
                              cfg.vocab_size or preset.vocab_size)
        processor = build_processor(tok, preset.chunk_s, preset.num_mel_bins)
        model, fresh = build_model(preset, tok, seed=cfg.seed), True
    if cfg.chat_template:
        with open(cfg.chat_template, encoding="utf-8") as f:
            processor.chat_template = f.read()
    return model, processor, fresh


def set_trainable(model, modules: list[str] | tuple[str, ...]) -> int:
    """Freeze everything but ``modules`` (encoder = audio tower, projector, lm = language model and
    head); return the number of trainable parameters."""
    inner = model.model
    parts = {"encoder": [inner.audio_tower], "projector": [inner.multi_modal_projector],
             "lm": [inner.language_model, model.lm_head]}
    for p in model.parameters():
        p.requires_grad_(False)
    for m in modules:
        for part in parts[m]:
            for p in part.parameters():
                p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclasses.dataclass
class Session:
    """One worker's stage: the model, what trains it and how far it has got."""
    cfg: TrainConfig
    dist: Dist
    stage_dir: str
    model: Any
    processor: Any
    ref: Any                   # DPO's frozen reference (None in other stages)
    ref_dir: str               # where the reference is saved, for the held-out eval of an export
    mode: str                  # ddp | fsdp | single
    modules: list[str]
    n_trainable: int
    params: list
    opt: Any
    sched: Any
    amp: Any
    loss_fn: DPOLoss
    fe: Any                    # the batched log-mel front end (built once; a step collates with it)
    step: int = 0
    total: int = 0             # steps of this stage: max_steps, or fewer where max_epochs caps them
    consumed: dict[str, Any] = dataclasses.field(default_factory=dict)
    best: dict[str, Any] | None = None      # {"step", "score"} of the export in ``best/``
    behind: int = 0            # held-out scores in a row below the best (early stopping)


def setup(cfg: TrainConfig, dist: Dist) -> Session:
    """Seeds, the model (with DPO's reference) wrapped for DDP or FSDP, optimiser and schedule, and the
    newest readable checkpoint of the stage restored."""
    torch.manual_seed(cfg.seed + dist.rank)
    random.seed(cfg.seed + dist.rank)
    stage_dir = os.path.join(cfg.output, cfg.stage)
    os.makedirs(stage_dir, exist_ok=True)
    model, processor, fresh = load_or_build(cfg)
    mode = parallel.strategy(cfg.parallel, cfg.preset, dist.world)
    modules = cfg.modules(fresh)
    ref, ref_dir = None, cfg.model_dir
    if cfg.stage == "dpo":
        if not ref_dir:   # a DPO run from a new model: keep its starting point for the held-out eval
            ref_dir = os.path.join(stage_dir, "reference")
            if dist.rank == 0 and not latest_checkpoint(stage_dir):
                model.save_pretrained(ref_dir)
                processor.save_pretrained(ref_dir)
        if not cfg.lora_r:    # with LoRA the reference is the model with its adapters disabled
            ref = copy.deepcopy(model).eval().requires_grad_(False).to(dist.device)
            ref = parallel.wrap(ref, "fsdp", dist.device, dist.world, cfg.bf16) if mode == "fsdp" else ref
    if cfg.lora_r:
        model = lora.attach(model, modules, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        n_trainable = lora.trainable(model)
    else:
        n_trainable = set_trainable(model, modules)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(dist.device)
    model = parallel.wrap(model, mode, dist.device, dist.world, cfg.bf16)
    model.float()   # fp32 master weights (sharded first under FSDP, so a bf16 checkpoint never lands whole in fp32)
    if ref is not None and mode == "fsdp":
        ref.float()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=cfg.weight_decay)
    from transformers import get_cosine_schedule_with_warmup

    total = cfg.steps()
    capped = epoch_steps(cfg, Encoder.for_processor(processor), dist.world) if total else None
    if capped is not None and capped < total:
        _say(dist, f"{cfg.stage}: {capped} steps make {cfg.epochs():g} pass(es) over the training examples "
                   f"(max_epochs), fewer than max_steps={total}")
        total = capped
    sched = get_cosine_schedule_with_warmup(opt, min(cfg.warmup_steps, total // 10 + 1), max(1, total))
    s = Session(cfg, dist, stage_dir, model, processor, ref, ref_dir, mode, modules, n_trainable, params, opt, sched,
                functools.partial(parallel.autocast, mode, dist.device, cfg.bf16), DPOLoss(cfg.beta, cfg.rpo_alpha),
                LogMel(processor.feature_extractor), total=total,
                consumed={"positions": [0] * max(1, cfg.loader_workers), "batches": 0}, best=_best_so_far(stage_dir))
    if dist.rank == 0:
        remove_unfinished(stage_dir)
    resume, step, consumed = resume_latest(stage_dir, model, opt, sched, dist)
    if resume:
        if len(consumed["positions"]) != max(1, cfg.loader_workers):
            raise ValueError(f"{resume} was written with {len(consumed['positions'])} loader workers; "
                             f"resume with loader_workers={len(consumed['positions'])}")
        s.step, s.consumed = step, consumed
        s.behind = s.best.get("behind", 0) if s.best else 0
        _say(dist, f"resuming {cfg.stage} from {resume} (step {step}, stream positions {consumed['positions']})")
    elif cfg.stage == "dpo" and cfg.keep_best and dist.rank == 0 and s.best is None:
        # The starting (SFT) model is the first candidate: DPO's best/ never scores below where it began.
        consider_best(s, ref_dir, evaluate_export(cfg, ref_dir, ref_dir, dist.device, before=False), copy=True)
    return s


def train_step(s: Session, micro: list[Batch]) -> dict[str, float]:
    """One optimiser step over the micro-batches of one global batch; records how far the data has been read."""
    for m in micro:
        s.consumed["positions"][m.worker] = m[-1].position + 1
    s.consumed["batches"] += len(micro)
    pad = s.processor.tokenizer.pad_token_id
    if s.cfg.stage == "dpo":
        metrics = dpo_step(s.model, s.ref, micro, pad, s.fe, s.dist, s.loss_fn, s.amp)
    else:
        metrics = lm_step(s.model, micro, pad, s.fe, s.dist, s.amp)
    torch.nn.utils.clip_grad_norm_(s.params, 1.0)
    s.opt.step()
    s.sched.step()
    s.opt.zero_grad(set_to_none=True)
    s.step += 1
    metrics["lr"] = s.sched.get_last_lr()[0]
    return metrics


def checkpoint(s: Session, metrics: dict[str, Any]) -> str | None:
    """Collective: a resumable checkpoint of the step; with ``keep_best``, rank 0 also scores its export on
    the held-out set and keeps it in ``best/`` when it beats the best so far."""
    folder, model_state = save_checkpoint(s.stage_dir, s.step, s.model, s.opt, s.sched, s.consumed, s.processor,
                                          s.dist, s.cfg.keep_checkpoints)
    if s.dist.rank == 0 and s.cfg.keep_best:
        candidate = os.path.join(s.stage_dir, "candidate")
        export(s, model_state, candidate)
        consider_best(s, candidate, evaluate_export(s.cfg, candidate, s.ref_dir, s.dist.device, before=False))
    _report(s.dist, {"step": s.step, **metrics}, folder)
    return folder


def stop_early(s: Session) -> bool:
    """Collective: whether ``patience`` held-out scores in a row fell below the best (rank 0 scores, every
    rank follows)."""
    stop = bool(s.cfg.keep_best and s.cfg.patience and s.behind >= s.cfg.patience)
    if s.dist.world > 1:
        flag = torch.tensor([int(stop)], device=s.dist.device)
        torch.distributed.broadcast(flag, src=0)
        stop = bool(flag.item())
    return stop


def export(s: Session, model_state: dict[str, Any], folder: str, last: bool = False) -> None:
    """Rank 0: the model (``save_pretrained``, in bf16 when training in bf16) and processor into ``folder``.
    Mid-run the live model keeps its fp32 master weights: a copy is converted (under FSDP, whose live
    model is sharded, only the saved tensors are). With LoRA: the adapters in ``adapter/`` and the model
    with them merged (a copy mid-run; the last export merges the live model)."""
    import shutil

    dtype = torch.bfloat16 if s.cfg.bf16 else torch.float32
    core = _core(s.model)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if lora.is_lora(core):
        lora.save_adapters(core, tmp, s.cfg.model_dir)
        plain = lora.merged(core, in_place=last).to(dtype)
        plain.save_pretrained(tmp)
    else:
        if dtype != torch.float32 and (last or s.mode != "fsdp"):
            core = (core if last else copy.deepcopy(core)).to(dtype)   # save_pretrained records the parameters' dtype
        core.save_pretrained(tmp, state_dict={k: v.to(dtype) for k, v in model_state.items()})
    s.processor.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def consider_best(s: Session, folder: str, result: dict[str, Any], copy: bool = False) -> None:
    """Keep ``folder``'s export as ``best/`` when its held-out score (then, after DPO, its preference
    accuracy) beats the best so far (ties go to the later step: it has seen more data). The folder is moved
    there, or with ``copy`` copied and left as is; a folder that is not kept and not to be left is removed.
    Every score is appended to ``held_out.jsonl``; ``s.behind`` counts the scores in a row below the best."""
    import shutil

    score, tiebreak = held_out_score(result), held_out_tiebreak(result)
    if score is not None:
        with open(os.path.join(s.stage_dir, "held_out.jsonl"), "a") as f:
            f.write(json.dumps({"step": s.step, "score": score, "tiebreak": tiebreak}) + "\n")
    if score is None or (s.best is not None and (score, tiebreak) < (s.best["score"], s.best.get("tiebreak", 0.0))):
        if score is not None:
            s.behind += 1
            _record_behind(s)
        if not copy:
            shutil.rmtree(folder, ignore_errors=True)
        return
    s.behind = 0
    best = os.path.join(s.stage_dir, "best")
    shutil.rmtree(best, ignore_errors=True)
    shutil.copytree(folder, best) if copy else os.replace(folder, best)
    s.best = {"step": s.step, "score": score, "tiebreak": tiebreak}
    with open(os.path.join(best, "best.json"), "w") as f:
        json.dump({**s.best, "behind": 0, "eval": result}, f, indent=2)
    _say(s.dist, f"{s.cfg.stage} step {s.step}: held-out score {score:.3f} is the best so far, exported to {best}")


def _record_behind(s: Session) -> None:
    """Keep the count of scores below the best in ``best.json``, so a resumed run stops where it would have."""
    path = os.path.join(s.stage_dir, "best", "best.json")
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            found = json.load(f)
        found["behind"] = s.behind
        with open(path, "w") as f:
            json.dump(found, f, indent=2)


def finish(s: Session, history: list[dict[str, Any]], errors: SkipCounter) -> tuple[dict[str, Any], str | None]:
    """Collective: the last checkpoint, then on rank 0 its export to ``final/`` scored on the held-out set
    (beside the reference after DPO), ``best/`` updated and ``eval.json`` written."""
    result: dict[str, Any] = {"steps": s.step, "workers": s.dist.world, "parallel": s.mode, "bf16": s.cfg.bf16,
                              "skipped_data": errors.errors[:20]}
    final_ckpt, model_state = save_checkpoint(s.stage_dir, s.step, s.model, s.opt, s.sched, s.consumed, s.processor,
                                              s.dist, s.cfg.keep_checkpoints)
    s.opt = s.ref = None
    if s.dist.rank != 0:
        return result, final_ckpt
    final = os.path.join(s.stage_dir, "final")
    export(s, model_state, final, last=True)
    del model_state
    # The held-out eval runs on the export itself (whole, on rank 0), so it also checks the export.
    result["eval"] = evaluate_export(s.cfg, final, s.ref_dir, s.dist.device)
    if s.cfg.keep_best:
        consider_best(s, final, result["eval"], copy=True)
        result["best"] = s.best
    result["train"] = {"final_loss": history[-1]["loss"] if history else None,
                       "first_loss": history[0]["loss"] if history else None}
    with open(os.path.join(s.stage_dir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    _say(s.dist, f"{s.cfg.stage}: done; eval {json.dumps(result['eval'])[:400]}")
    return result, final_ckpt


def train_loop(cfg: TrainConfig, dist: Dist | None = None) -> dict[str, Any]:
    """One worker's stage: set-up, steps until ``s.total`` (or early stopping), a checkpoint every
    ``checkpoint_every``, the export and its held-out eval. ``dist`` is this worker's place in the group (one rank without it)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # the loop reports its own progress
    dist = dist or Dist()
    if dist.rank == 0 and "://" not in cfg.output:
        os.makedirs(os.path.join(cfg.output, cfg.stage), exist_ok=True)
        dist = dataclasses.replace(dist, console=os.path.join(cfg.output, cfg.stage, CONSOLE))
    if not dist.ray and cfg.use_gpu and torch.cuda.is_available():
        dist.device = torch.device("cuda")
    s = setup(cfg, dist)
    encoder = Encoder.for_processor(s.processor)
    errors = SkipCounter(cfg.max_bad_fraction)
    batches = micro_batches(cfg, encoder, dist, s.consumed["positions"], s.consumed["batches"],
                            s.processor.tokenizer.pad_token_id, s.fe, errors)
    writer = _writer(s.stage_dir) if dist.rank == 0 else None
    how = f"LoRA r={cfg.lora_r} on " if cfg.lora_r else ""
    _say(dist, f"{cfg.stage}: training {how}{', '.join(s.modules)} ({s.n_trainable:,} parameters) for {s.total} steps "
               f"on {dist.world} worker(s) ({s.mode}), device {dist.device}{', bf16' if cfg.bf16 else ''}")
    history: list[dict[str, Any]] = []
    progress = _Progress(cfg.stage, s.step, s.total, dist)
    s.model.train()
    with _Interrupt(enabled=not dist.ray) as interrupt:
        while s.step < s.total:
            if interrupt.requested:
                folder, _ = save_checkpoint(s.stage_dir, s.step, s.model, s.opt, s.sched, s.consumed, s.processor, dist,
                                            cfg.keep_checkpoints)
                raise KeyboardInterrupt(f"{cfg.stage} interrupted at step {s.step}; checkpoint {folder} saved")
            micro = [next(batches) for _ in range(cfg.grad_accum)]
            metrics = train_step(s, micro)
            history.append({"step": s.step, **metrics})
            if dist.rank == 0:
                with open(os.path.join(s.stage_dir, "train_log.jsonl"), "a") as f:
                    f.write(json.dumps({"step": s.step, **metrics}) + "\n")
            progress.tokens += sum(len(e) for m in micro for e in m)
            if s.step % 10 == 0 or s.step == s.total:
                progress.log(writer, s.step, metrics)
            if s.step % cfg.checkpoint_every == 0 and s.step < s.total:
                checkpoint(s, metrics)
                if stop_early(s):
                    _say(dist, f"{cfg.stage}: stopped early at step {s.step}: {s.behind} held-out scores in a row "
                               f"below the best ({s.best['score']:.3f} at step {s.best['step']})")
                    break
    result, final_ckpt = finish(s, history, errors)
    if writer:
        writer.close()
    _report(dist, {"step": s.step, "done": True}, final_ckpt)
    return result

