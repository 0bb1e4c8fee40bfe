"""The training recipe: pretrain → SFT → DPO over example shards, one loop for all three stages.

``run_stage(cfg)`` trains one stage on Ray Train (TorchTrainer, DDP; gloo on CPU) or in this process
(``launcher=local``, the same loop with one rank). Each stage leaves ``OUTPUT/<stage>/final`` (model +
processor by ``save_pretrained``), ``OUTPUT/<stage>/eval.json`` and resumable checkpoints under
``OUTPUT/<stage>/checkpoints`` holding model, optimiser, scheduler, data position and RNG state.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import glob
import json
import logging
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from trainer.config import DEFAULT_TRAIN, STAGES, TRANSCRIPTION_TASKS, TrainConfig
from trainer.data import (DataError, Encoder, PairEncoded, SkipCounter, collate, decode_sample, read_all,
                          reference_answer, sample_stream, token_batches)
from trainer import holdout, parallel
from trainer.features import LogMel
from trainer.holdout import HoldoutPlan, load_or_plan
from trainer.losses import IGNORE, DPOLoss, count_targets, nll_sum, sequence_logprob
from trainer.model import PRESETS, build_model, build_processor, chunk_seconds, load_pretrained, train_tokenizer

log = logging.getLogger("audiomill.train")


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    ray: bool = False
    console: str = ""      # rank 0 also appends what it says to this file (the stage's console.log)


# ---- model set-up ----------------------------------------------------------------------------------

class TrainDataError(ValueError):
    """The example set cannot be trained on as configured (no shards, a task weight for an absent task)."""


def stage_shards(examples: str, stage: str, held_out: bool = False) -> list[str]:
    folder = os.path.join(examples, stage, "eval") if held_out else os.path.join(examples, stage)
    return sorted(glob.glob(os.path.join(folder, "*.tar")))


def layout_problem(examples: str, stages: tuple[str, ...] | list[str]) -> str:
    """What EXAMPLES_DIR should hold and what it holds, for a message."""
    expected = ", ".join(f"{s}/*.tar" for s in stages)
    if not os.path.isdir(examples):
        return f"EXAMPLES_DIR {examples} does not exist; expected a folder with {expected} (held-out sets in <stage>/eval/)"
    found = sorted(os.listdir(examples))[:8]
    return (f"EXAMPLES_DIR {examples} has no example shards for {', '.join(stages)}: expected {expected} "
            f"(held-out sets in <stage>/eval/*.tar); found {found or 'nothing'}")


def corpus_texts(examples: str, errors: SkipCounter | None = None) -> Iterator[str]:
    """Every prompt, target and turn in the training shards of all stages (for the tokenizer); unreadable
    shards and samples are skipped and counted, as in training."""
    errors = errors or SkipCounter()
    for stage in STAGES:
        for ex, _ in read_all(stage_shards(examples, stage), errors):
            yield from (ex.prompt, ex.target, ex.chosen, ex.rejected)
            for m in ex.messages:
                for c in m["content"] if not isinstance(m["content"], str) else [{"type": "text", "text": m["content"]}]:
                    if c["type"] == "text":
                        yield c["text"]


def held_out_slice(cfg: TrainConfig) -> bool:
    """Without a ``<stage>/eval`` set, groups of examples that share a source recording or content are held
    out of training for evaluation (``trainer/holdout.py``)."""
    return cfg.eval_holdout > 0 and not stage_shards(cfg.examples, cfg.stage, held_out=True)


def holdout_plan(cfg: TrainConfig) -> HoldoutPlan:
    """The held-out groups, planned over the training shards of every stage (one split for all stages)."""
    urls = [u for stage in STAGES for u in stage_shards(cfg.examples, stage)]
    return load_or_plan(cfg.output, urls, cfg.eval_holdout, cfg.seed, cfg.max_bad_fraction)


def in_holdout(ex, cfg: TrainConfig) -> bool:
    return holdout.in_holdout(ex, holdout_plan(cfg).keys)


def stage_tasks(cfg: TrainConfig, limit: int = 2000) -> set[str]:
    """The tasks the stage's training shards hold: from the example layer's manifest, else read."""
    import json

    manifest = os.path.join(cfg.examples, "manifest.json")
    if os.path.exists(manifest):
        counts = json.load(open(manifest)).get("summary", {}).get("examples_by_stage_task", {})
        tasks = {k.split("/")[-1] for k in counts if k.split("/")[0] == cfg.stage and "/eval/" not in k}
        if tasks:
            return tasks
    tasks = set()
    for n, (ex, _) in enumerate(read_all(stage_shards(cfg.examples, cfg.stage))):
        tasks.add(ex.task)
        if n >= limit:
            break
    return tasks


def foreign_shards(examples: str, stages) -> str | None:
    """Why the folders of ``stages`` (training and held-out) do not each hold their own stage's shards, or
    None: a shard whose first example is of another stage. One sample read per shard."""
    found = []
    for stage in stages:
        for url in stage_shards(examples, stage) + stage_shards(examples, stage, held_out=True):
            first = next(read_all([url]), None)
            if first is not None and first[0].stage != stage:
                found.append(f"{os.path.relpath(url, examples)} holds {first[0].stage} examples")
    if not found:
        return None
    return (f"{examples} holds shards in another stage's folder ({'; '.join(found[:3])}"
            f"{' …' if len(found) > 3 else ''}); each stage's shards go in its own folder")


def check_data(cfg: TrainConfig) -> None:
    """Before any training: the stage has shards, each of them its own stage's, and task_weights name tasks
    the data holds."""
    if not stage_shards(cfg.examples, cfg.stage):
        raise TrainDataError(layout_problem(cfg.examples, [cfg.stage]))
    foreign = foreign_shards(cfg.examples, [cfg.stage])
    if foreign:
        raise TrainDataError(foreign)
    if cfg.task_weights:
        tasks = stage_tasks(cfg)
        unknown = sorted(set(cfg.task_weights) - tasks)
        if unknown:
            raise TrainDataError(f"task_weights names tasks the {cfg.stage} shards do not hold: {unknown}; "
                                 f"they hold {sorted(tasks)}")
        if not any(cfg.task_weights.get(t, 0.0) > 0 for t in tasks):
            raise TrainDataError(f"task_weights gives every task of the {cfg.stage} shards weight 0")


def load_or_build(cfg: TrainConfig) -> tuple[Any, Any, bool]:
    """(model, processor, fresh): from ``model_dir`` if set, else a new model of the preset with a
    tokenizer trained on the shards' text (deterministic, so every rank builds the same one)."""
    if cfg.model_dir:
        dtype = torch.bfloat16 if cfg.bf16 else None
        model, processor = load_pretrained(cfg.model_dir, dtype=dtype)
        return model, processor, False
    preset = PRESETS[cfg.preset]
    tok = train_tokenizer(corpus_texts(cfg.examples, SkipCounter(cfg.max_bad_fraction)), cfg.vocab_size or preset.vocab_size)
    processor = build_processor(tok, preset.chunk_s, preset.num_mel_bins)
    return build_model(preset, tok, seed=cfg.seed), processor, True


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


def _core(model):
    return model.module if hasattr(model, "module") else model


# ---- the step ----------------------------------------------------------------------------------------

def _to(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def _logits(model, batch: dict[str, Any], amp=contextlib.nullcontext) -> torch.Tensor:
    """fp32 logits, the forward run under ``amp()`` (bf16 autocast when configured)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with amp():
        return model(**inputs).logits.float()


class Batch(list):
    """The items of one micro-batch, with their collated tensors when a loader worker already made them
    and the (virtual) loader worker that produced it."""

    tensors: dict[str, Any] | None = None
    worker: int = 0


def _tensors(items: list, pad_id: int, fe, pairs: bool) -> dict[str, Any]:
    cached = getattr(items, "tensors", None)
    if cached is not None:
        return cached
    if pairs:
        return collate([p.chosen for p in items] + [p.rejected for p in items], pad_id, fe)
    return collate(items, pad_id, fe)


def lm_step(model, micro: list[list], pad_id: int, fe, dist: Dist, amp=contextlib.nullcontext) -> dict[str, float]:
    """Backward over micro-batches of ``Encoded``; the loss is normalised by the target tokens of the
    whole accumulated (and, under DDP or FSDP, global) batch, so accumulation and sharding leave it
    unchanged. The returned loss is the global batch's."""
    batches = [_tensors(m, pad_id, fe, pairs=False) for m in micro]
    tokens = torch.tensor(_sum(dist, [sum(count_targets(b["labels"]) for b in batches)])[0], device=dist.device)
    total = 0.0
    for b in batches:
        b = _to(b, dist.device)
        loss = nll_sum(_logits(model, b, amp), b["labels"]) * dist.world / tokens.clamp(min=1)
        loss.backward()
        total += loss.item() / dist.world
    return {"loss": _sum(dist, [total])[0], "target_tokens": tokens.item()}


def dpo_step(model, ref, micro: list[list[PairEncoded]], pad_id: int, fe, dist: Dist, loss_fn: DPOLoss,
             amp=contextlib.nullcontext) -> dict[str, float]:
    """Backward of the DPO loss over micro-batches of pairs; the reference runs without gradients."""
    pairs = torch.tensor(_sum(dist, [sum(len(m) for m in micro)])[0], device=dist.device)
    total, correct, margin = 0.0, 0.0, 0.0
    for m in micro:
        b = _to(_tensors(m, pad_id, fe, pairs=True), dist.device)
        n = len(m)
        logps = sequence_logprob(_logits(model, b, amp), b["labels"])
        with torch.no_grad():
            ref_logps = sequence_logprob(_logits(ref, b, amp), b["labels"])
        chosen_tokens = (b["labels"][:n, 1:] != IGNORE).sum(dim=-1)
        losses, rc, rr = loss_fn(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], chosen_tokens)
        loss = losses.sum() * dist.world / pairs
        loss.backward()
        total += loss.item() / dist.world
        correct += (rc > rr).float().sum().item()
        margin += (rc - rr).sum().item()
    total, correct, margin, count = _sum(dist, [total, correct, margin, sum(len(m) for m in micro)])
    return {"loss": total, "reward_accuracy": correct / count, "reward_margin": margin / count}


def _sum(dist: Dist, values: list[float]) -> list[float]:
    """Per-rank partial sums → global sums (the logged metrics cover every rank's data)."""
    if dist.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


# ---- data --------------------------------------------------------------------------------------------

def encoded_stream(cfg: TrainConfig, encoder: Encoder, dist: Dist, skip: int, errors: SkipCounter) -> Iterator:
    """Encoded examples of the stage, mixed by ``task_weights`` (rejection sampling, seeded); a sample that
    cannot be read is skipped and counted (``errors`` stops training when too many are)."""
    urls = stage_shards(cfg.examples, cfg.stage)
    if not urls:
        raise TrainDataError(layout_problem(cfg.examples, [cfg.stage]))
    weights = cfg.task_weights
    top = max(weights.values()) if weights else 1.0
    hold = held_out_slice(cfg)
    for position, sample in sample_stream(urls, cfg.seed, dist.rank, dist.world, cfg.shuffle_buffer, skip, errors):
        try:
            ex, audios = decode_sample(sample)
        except DataError as e:
            errors(e)
            continue
        errors.ok()
        if hold and in_holdout(ex, cfg):
            continue
        # The draw depends on the position only, so a resumed run makes the same choices.
        if weights and random.Random(f"mix:{cfg.seed}:{dist.rank}:{position}").random() >= weights.get(ex.task, 0.0) / top:
            continue
        item = encoder.encode(ex, audios)
        item.position = position
        yield item


class _Length:
    """Stands in for a waveform where only its length counts (``Encoder`` sizes audio by it)."""

    def __init__(self, duration_s: float):
        self.n = int(round(duration_s * 16000))

    def __len__(self) -> int:
        return self.n


def epoch_steps(cfg: TrainConfig, encoder: Encoder, world: int, sample: int = 512) -> int | None:
    """Optimiser steps that make ``cfg.epochs()`` passes over the stage's training examples (after the
    held-out groups and the ``task_weights`` draw), or None without a cap. One pass reads the records (not
    the audio); the micro-batch size is that of the first ``sample`` examples batched by the token budget."""
    epochs = cfg.epochs()
    if epochs <= 0:
        return None
    weights = cfg.task_weights
    top = max(weights.values()) if weights else 1.0
    hold = held_out_slice(cfg)
    count, items = 0.0, []
    for ex in holdout.read_examples(stage_shards(cfg.examples, cfg.stage), SkipCounter(cfg.max_bad_fraction)):
        if hold and in_holdout(ex, cfg):
            continue
        count += weights.get(ex.task, 0.0) / top if weights else 1.0
        if len(items) < sample:
            items.append(encoder.encode(ex, [_Length(a.duration_s) for a in ex.audio]))
    if not items:
        return None
    per_batch = len(items) / sum(1 for _ in token_batches(iter(items), cfg.max_tokens, cfg.max_batch))
    return max(1, math.ceil(epochs * count / (per_batch * cfg.grad_accum * world)))


# ---- checkpoints ---------------------------------------------------------------------------------------

_STEP_DIR = re.compile(r"step-(\d+)")


def checkpoints(stage_dir: str) -> list[str]:
    """Committed checkpoints (``step-N/state.pt``; an unfinished ``step-N.tmp/`` is not one), newest first."""
    found = []
    for path in glob.glob(os.path.join(stage_dir, "checkpoints", "step-*", "state.pt")):
        m = _STEP_DIR.fullmatch(os.path.basename(os.path.dirname(path)))
        if m:
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(stage_dir: str) -> str | None:
    found = checkpoints(stage_dir)
    return found[0] if found else None


def remove_unfinished(stage_dir: str) -> None:
    """``step-N.tmp/`` folders left by a run killed while saving."""
    import shutil

    for path in glob.glob(os.path.join(stage_dir, "checkpoints", "step-*.tmp")):
        shutil.rmtree(path, ignore_errors=True)


class StageLoader(torch.utils.data.IterableDataset):
    """Micro-batches of the stage, built in DataLoader workers (or in-process): each worker streams its own
    share of the shards (virtual rank = rank × workers + worker), encodes, batches by token budget and
    collates. ``positions`` (per virtual worker) and ``offset`` (micro-batches consumed, mod workers, so
    the round-robin restarts at the right worker) make a resumed run continue the same sequence."""

    def __init__(self, cfg: TrainConfig, encoder: Encoder, dist: Dist, positions: list[int], offset: int,
                 pad_id: int, fe, errors: SkipCounter):
        super().__init__()
        self.cfg, self.encoder, self.dist = cfg, encoder, dist
        self.positions, self.offset, self.pad_id, self.fe, self.errors = positions, offset, pad_id, fe, errors

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        n = info.num_workers if info else 1
        worker = ((info.id if info else 0) + self.offset) % n
        vdist = Dist(rank=self.dist.rank * n + worker, world=self.dist.world * n)
        stream = encoded_stream(self.cfg, self.encoder, vdist, self.positions[worker], self.errors)
        for items in token_batches(stream, self.cfg.max_tokens, self.cfg.max_batch):
            batch = Batch(items)
            batch.worker = worker
            batch.tensors = _tensors(items, self.pad_id, self.fe, pairs=self.cfg.stage == "dpo")
            for item in items:   # the features hold the audio now; don't ship the waveforms between processes
                for e in (item.chosen, item.rejected) if isinstance(item, PairEncoded) else (item,):
                    e.audios = []
            yield batch


def micro_batches(cfg: TrainConfig, encoder: Encoder, dist: Dist, positions: list[int], consumed_batches: int,
                  pad_id: int, fe, errors: SkipCounter) -> Iterator[Batch]:
    """The stage's micro-batches; with ``loader_workers`` > 0 from a DataLoader whose workers decode,
    encode and collate (their skipped-data reports go to the log, not to ``errors``)."""
    workers = max(1, cfg.loader_workers)
    loader = StageLoader(cfg, encoder, dist, positions, consumed_batches % workers, pad_id, fe, errors)
    if cfg.loader_workers == 0:
        return iter(loader)
    return iter(torch.utils.data.DataLoader(loader, batch_size=None, num_workers=cfg.loader_workers,
                                            prefetch_factor=4, collate_fn=_identity,
                                            worker_init_fn=functools.partial(_die_with_parent, os.getpid())))


def _die_with_parent(parent: int, worker_id: int) -> None:
    """A loader worker ends with its trainer. A trainer killed with SIGKILL can't stop its workers, and a
    worker blocked on a full queue would otherwise live on, holding its memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the trainer, which stops the workers
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    if os.getppid() != parent:   # the trainer died before the line above took effect
        os._exit(1)


def _identity(batch: Batch) -> Batch:
    return batch


def save_checkpoint(stage_dir: str, step: int, model, opt, sched, consumed: dict[str, Any], processor,
                    dist: Dist) -> tuple[str | None, dict[str, Any] | None]:
    """Collective: every rank hands over its model and optimiser shards and its own stream positions and
    RNG state; rank 0 writes ``step-N/`` and returns its path and the full model state (None elsewhere)."""
    model_state, opt_state = parallel.full_state(model, opt)
    ranks = _gather(dist, {"positions": list(consumed["positions"]), "torch_rng": torch.get_rng_state(),
                           "python_rng": list(random.getstate()[1]), "python_rng_pos": random.getstate()[2]})
    if dist.rank != 0:
        return None, None
    folder = os.path.join(stage_dir, "checkpoints", f"step-{step:07d}")
    tmp = folder + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    state = {"model": model_state, "optimizer": opt_state, "scheduler": sched.state_dict(), "step": step,
             "batches": consumed["batches"], "ranks": ranks}
    torch.save(state, os.path.join(tmp, "state.pt"))
    processor.save_pretrained(tmp)
    if os.path.exists(folder):
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder, model_state


def load_checkpoint(path: str, model, opt, sched, dist: Dist) -> tuple[int, dict[str, Any]]:
    """Restore a checkpoint on every rank; each rank takes back its own stream positions and RNG."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, OSError, ValueError) as e:       # a damaged file: not this run's fault
        raise CorruptCheckpoint(f"{path}: {type(e).__name__}: {e}"[:300]) from None
    if len(state["ranks"]) != dist.world:
        raise ValueError(f"{path} was written by {len(state['ranks'])} workers; resume with "
                         f"num_workers={len(state['ranks'])}")
    parallel.load_full_state(model, opt, state["model"], state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    mine = state["ranks"][dist.rank]
    torch.set_rng_state(mine["torch_rng"])
    random.setstate((3, tuple(int(v) for v in mine["python_rng"]), mine["python_rng_pos"]))
    return int(state["step"]), {"positions": [int(p) for p in mine["positions"]], "batches": int(state["batches"])}


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file that cannot be read back."""


def resume_latest(stage_dir: str, model, opt, sched, dist: Dist) -> tuple[str | None, int, dict[str, Any] | None]:
    """Load the newest checkpoint that reads back, falling back to older ones; (path, step, consumed)."""
    for path in checkpoints(stage_dir):
        try:
            step, consumed = load_checkpoint(path, model, opt, sched, dist)
            return path, step, consumed
        except CorruptCheckpoint as e:
            _say(dist, f"checkpoint unreadable, trying the one before: {e}")
    return None, 0, None


def _gather(dist: Dist, obj: Any) -> list[Any]:
    if dist.world == 1:
        return [obj]
    out: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(out, obj)
    return out


# ---- evaluation ----------------------------------------------------------------------------------------

def evaluate_export(cfg: TrainConfig, final: str, ref_dir: str, device, before: bool = True) -> dict[str, Any]:
    """``evaluate`` on the model saved in ``final``; for DPO with the reference saved in ``ref_dir`` (and,
    with ``before``, the reference's own generation scores beside)."""
    dtype = torch.bfloat16 if cfg.bf16 else None
    model, processor = load_pretrained(final, dtype=dtype)
    ref = load_pretrained(ref_dir, dtype=dtype)[0].to(device).eval() if cfg.stage == "dpo" else None
    return evaluate(cfg, model.to(device), ref, processor, device, before=before)


@torch.no_grad()
def evaluate(cfg: TrainConfig, model, ref, processor, device, before: bool = False,
             generate: bool = True) -> dict[str, Any]:
    """Greedy generation on held-out examples: accuracy per classification task, WER on transcription.
    After DPO: held-out reward accuracy and the chosen-vs-rejected likelihood shift, and (unless not
    ``generate``) generation on the SFT held-out set (``tasks``; with ``before``, the reference's beside it
    as ``tasks_before``), so a DPO run that costs what SFT taught shows it."""
    model.eval()
    if cfg.stage == "dpo":
        pairs, note = held_out_examples(cfg)
        if not pairs:
            return {"examples": 0, "note": note}
        encoder = Encoder(processor.tokenizer, chunk_seconds(processor))
        out = {**_eval_dpo(cfg, model, ref, processor.tokenizer.pad_token_id, LogMel(processor.feature_extractor),
                           encoder, pairs, device), "held_out": note}
        if not generate:
            return out
        sft = dataclasses.replace(cfg, stage="sft")
        tasks = generation_scores(sft, model, processor, device)
        if tasks.get("tasks"):
            out["tasks"], out["tasks_held_out"] = tasks["tasks"], tasks["held_out"]
            if before:
                out["tasks_before"] = generation_scores(sft, ref, processor, device)["tasks"]
        return out
    return generation_scores(cfg, model, processor, device)


@torch.no_grad()
def generation_scores(cfg: TrainConfig, model, processor, device) -> dict[str, Any]:
    """Greedy replies to the held-out examples of ``cfg.stage``, scored per task against their references."""
    model.eval()
    encoder = Encoder(processor.tokenizer, chunk_seconds(processor))
    logmel = LogMel(processor.feature_extractor)
    examples, note = held_out_examples(cfg)
    if not examples:
        return {"examples": 0, "note": note}
    per_task: dict[str, dict[str, list]] = {}
    eos = [processor.tokenizer.eos_token_id, processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    for ex, audios in (item for whole, audios in examples for item in eval_items(whole, audios)):
        ids = torch.tensor([encoder.prompt_ids(ex, audios)], device=device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if audios:
            feats, mask = logmel(audios)
            inputs["input_features"] = feats.to(device, model.dtype)
            inputs["feature_attention_mask"] = mask.to(device)
        out = model.generate(**inputs, max_new_tokens=cfg.eval_max_new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=processor.tokenizer.pad_token_id)
        hyp = processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        slot = per_task.setdefault(eval_task(ex), {"hyp": [], "ref": [], "keywords": []})
        slot["hyp"].append(hyp)
        slot["ref"].append(reference_answer(ex).strip())
        slot["keywords"].append(ex.provenance.get("keywords") or [])
    return {"examples": len(examples), "held_out": note,
            "tasks": {task: score_task(task, s["ref"], s["hyp"], s["keywords"]) for task, s in sorted(per_task.items())}}


def eval_items(ex, audios: list) -> list[tuple[Any, list]]:
    """What is scored of one held-out example: the example, or for an analysis chat each of its questions
    in turn, with the turns before it as they were (so every language or event question counts, not only
    the last one)."""
    if ex.task != "analysis" or not ex.template:
        return [(ex, audios)]
    parts = ex.template.split("+")
    answers = [i for i, m in enumerate(ex.messages) if m["role"] == "assistant"]
    if len(parts) != len(answers):
        return [(ex, audios)]
    return [(dataclasses.replace(ex, messages=ex.messages[:i + 1], template="+".join(parts[:n + 1])), audios)
            for n, i in enumerate(answers)]


def eval_task(ex) -> str:
    """The name an example is scored under: its task, and for an analysis chat also the kind of its last
    question (``analysis/language``, ``analysis/events``; the template's last part), so each kind of question
    gets its own score and chance level rather than one blend."""
    if ex.task == "analysis" and ex.template:
        return "analysis/" + ex.template.split("+")[-1].split(".")[0]
    return ex.task


def held_out_examples(cfg: TrainConfig) -> tuple[list, str]:
    """(examples, where they came from): the ``<stage>/eval`` set, else the seeded held-out slice of the
    training shards; unreadable shards and samples are skipped and counted."""
    import itertools

    errors = SkipCounter(max_fraction=1.0)
    if stage_shards(cfg.examples, cfg.stage, held_out=True):
        found = read_all(stage_shards(cfg.examples, cfg.stage, held_out=True), errors)
        where = f"{cfg.stage}/eval"
    elif cfg.eval_holdout > 0:
        found = ((ex, a) for ex, a in read_all(stage_shards(cfg.examples, cfg.stage), errors) if in_holdout(ex, cfg))
        where = (f"groups sharing no source recording or content with training, held out of {cfg.stage}/ "
                 f"(there is no {cfg.stage}/eval)")
    else:
        return [], f"no {cfg.stage}/eval set and eval_holdout=0: evaluation skipped"
    examples = list(itertools.islice(found, cfg.eval_max_examples))
    note = where + (f"; {errors.skipped} unreadable samples or shards skipped" if errors.skipped else "")
    return examples, note


def score_task(task: str, refs: list[str], hyps: list[str], keywords: list[list[str]] | None = None) -> dict[str, Any]:
    """WER (jiwer) for transcription tasks; exact-match accuracy (case and full stops ignored) with the
    majority-answer chance level for the rest, and for sound events also F1 over the named events beside
    the best constant answer's. Where the examples carry the answer's keywords (voice chat), also the share
    of replies that answer the request (``grounded``: at least half of its keywords said) beside the best
    constant reply's. Plus a few (reference, hypothesis) samples."""
    if task in TRANSCRIPTION_TASKS:
        import jiwer

        out: dict[str, Any] = {"wer": jiwer.wer([_norm(r) for r in refs], [_norm(h) for h in hyps]), "n": len(refs)}
    else:
        acc = sum(_norm(h) == _norm(r) for h, r in zip(hyps, refs)) / len(refs)
        out = {"accuracy": acc, "n": len(refs), "chance": _chance(refs)}
        if task in SET_TASKS:      # a set of names: F1 per example, averaged
            names = SET_TASKS[task]
            out["f1"] = sum(_f1(names(r), names(h)) for r, h in zip(refs, hyps)) / len(refs)
            out["chance_f1"] = max(sum(_f1(names(r), names(c)) for r in refs) / len(refs) for c in set(refs))
        if keywords and all(keywords):
            out["grounded"] = sum(map(_grounded, keywords, hyps)) / len(refs)
            out["chance_grounded"] = max(sum(map(_grounded, keywords, [c] * len(refs))) / len(refs)
                                         for c in set(refs))
    out["samples"] = list(zip(refs, hyps))[:5]
    return out


def _listed(text: str) -> set[str]:
    """The names an analysis answer lists ("I can hear speech, dog and rain." → speech, dog, rain). A name
    with a comma in it ("gunshot, gunfire") splits the same way in the reference and the reply."""
    text = _norm(text)
    text = text[len("i can hear "):] if text.startswith("i can hear ") else text
    return {p.strip() for p in re.split(r",| and ", text) if p.strip()}


# Tasks whose answer is a set of names, and how a reply names them: "; " between AudioSet names (they hold
# commas but never a semicolon), or an analysis answer's listing.
SET_TASKS = {"sound_events": lambda t: {_norm(x) for x in t.split(";") if x.strip()},
             "analysis/events": _listed}


def _f1(r: set[str], h: set[str]) -> float:
    if not r and not h:
        return 1.0
    tp = len(r & h)
    return 2 * tp / (len(r) + len(h)) if tp else 0.0


def _grounded(keywords: list[str], reply: str) -> bool:
    said = set(re.findall(r"\w+", reply.lower()))
    return 2 * sum(k.lower() in said for k in keywords) >= len(keywords)


def _norm(s: str) -> str:
    return " ".join(s.lower().replace(".", " ").split())


def _chance(refs: list[str]) -> float:
    """Accuracy of always answering the most frequent reference."""
    from collections import Counter

    return Counter(map(_norm, refs)).most_common(1)[0][1] / len(refs)


def _eval_dpo(cfg, model, ref, pad_id, logmel, encoder, examples, device) -> dict[str, Any]:
    pairs = [encoder.encode(ex, audios) for ex, audios in examples]
    correct, prefers, prefers_before, shift = 0, 0, 0, 0.0
    for p in pairs:
        b = _to(collate([p.chosen, p.rejected], pad_id, logmel), device)
        if "input_features" in b:
            b["input_features"] = b["input_features"].to(model.dtype)
        lp = sequence_logprob(_logits(model, b), b["labels"])
        rp = sequence_logprob(_logits(ref, b), b["labels"])
        rc, rr = cfg.beta * (lp[0] - rp[0]), cfg.beta * (lp[1] - rp[1])
        correct += int(rc > rr)
        prefers += int(lp[0] > lp[1])
        prefers_before += int(rp[0] > rp[1])
        shift += ((lp[0] - lp[1]) - (rp[0] - rp[1])).item()
    # Reward accuracy is 0.5 for the reference by definition (every margin 0); preference accuracy (the
    # chosen reply more likely than the rejected one) compares the model with the reference itself.
    return {"examples": len(pairs), "reward_accuracy": correct / len(pairs),
            "preference_accuracy": prefers / len(pairs), "preference_accuracy_before": prefers_before / len(pairs),
            "chosen_minus_rejected_logp_shift": shift / len(pairs)}


# ---- the loop: set-up, train step, checkpoint, finish --------------------------------------------------

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
    modules = cfg.train_modules or (list(DEFAULT_TRAIN[cfg.stage]) + (["lm"] if fresh and cfg.stage == "pretrain" else []))
    n_trainable = set_trainable(model, modules)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref, ref_dir = None, cfg.model_dir
    if cfg.stage == "dpo":
        if not ref_dir:   # a DPO run from a new model: keep its starting point for the held-out eval
            ref_dir = os.path.join(stage_dir, "reference")
            if dist.rank == 0 and not latest_checkpoint(stage_dir):
                model.save_pretrained(ref_dir)
                processor.save_pretrained(ref_dir)
        ref = copy.deepcopy(model).eval().requires_grad_(False).to(dist.device)
        ref = parallel.wrap(ref, "fsdp", dist.device, dist.world, cfg.bf16) if mode == "fsdp" else ref
    model.to(dist.device)
    model = parallel.wrap(model, mode, dist.device, dist.world, cfg.bf16)
    model.float()   # fp32 master weights (sharded first under FSDP, so a bf16 checkpoint never lands whole in fp32)
    if ref is not None and mode == "fsdp":
        ref.float()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=cfg.weight_decay)
    from transformers import get_cosine_schedule_with_warmup

    total = cfg.steps()
    capped = epoch_steps(cfg, Encoder(processor.tokenizer, chunk_seconds(processor)), dist.world) if total else None
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
    folder, model_state = save_checkpoint(s.stage_dir, s.step, s.model, s.opt, s.sched, s.consumed, s.processor, s.dist)
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
    model is sharded, only the saved tensors are)."""
    import shutil

    dtype = torch.bfloat16 if s.cfg.bf16 else torch.float32
    core = _core(s.model)
    if dtype != torch.float32 and (last or s.mode != "fsdp"):
        core = (core if last else copy.deepcopy(core)).to(dtype)   # save_pretrained records the parameters' dtype
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
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


def headline_metric(scores: dict[str, Any]) -> str:
    """The metric a task is judged by: WER, F1 for event sets, grounding for voice chat, else accuracy."""
    return next(m for m in ("wer", "f1", "grounded", "accuracy") if m in scores)


def held_out_score(result: dict[str, Any]) -> float | None:
    """One number per held-out eval, higher is better: the mean over tasks of their headline metric
    (``headline_metric``), 1 − WER (capped at 0) for transcription; after DPO, the SFT tasks (what SFT taught
    must stay). Without tasks, held-out preference accuracy (how often the chosen reply is the likelier one),
    else reward accuracy (0.5 for the starting model by definition). None without held-out examples."""
    tasks = result.get("tasks") or {}
    if tasks:
        vals = [max(0.0, 1.0 - r["wer"]) if (m := headline_metric(r)) == "wer" else r[m] for r in tasks.values()]
        return sum(vals) / len(vals)
    for key in ("preference_accuracy", "reward_accuracy"):
        if key in result:
            return float(result[key])
    return None


def held_out_tiebreak(result: dict[str, Any]) -> float:
    """What decides between two equal task scores after DPO: held-out preference accuracy. A DPO that keeps
    the tasks but only learned its training pairs prefers the chosen reply on fewer held-out pairs than
    its starting model, and is not kept."""
    return float(result.get("preference_accuracy", 0.0)) if result.get("tasks") else 0.0


def _best_so_far(stage_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(stage_dir, "best", "best.json")) as f:
            found = json.load(f)
        return {"step": int(found["step"]), "score": float(found["score"]),
                "tiebreak": float(found.get("tiebreak", 0.0)), "behind": int(found.get("behind", 0))}
    except (OSError, ValueError, KeyError):
        return None


def finish(s: Session, history: list[dict[str, Any]], errors: SkipCounter) -> tuple[dict[str, Any], str | None]:
    """Collective: the last checkpoint, then on rank 0 its export to ``final/`` scored on the held-out set
    (beside the reference after DPO), ``best/`` updated and ``eval.json`` written."""
    result: dict[str, Any] = {"steps": s.step, "workers": s.dist.world, "parallel": s.mode, "bf16": s.cfg.bf16,
                              "skipped_data": errors.errors[:20]}
    final_ckpt, model_state = save_checkpoint(s.stage_dir, s.step, s.model, s.opt, s.sched, s.consumed, s.processor,
                                              s.dist)
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
    encoder = Encoder(s.processor.tokenizer, chunk_seconds(s.processor))
    errors = SkipCounter(cfg.max_bad_fraction)
    batches = micro_batches(cfg, encoder, dist, s.consumed["positions"], s.consumed["batches"],
                            s.processor.tokenizer.pad_token_id, s.fe, errors)
    writer = _writer(s.stage_dir) if dist.rank == 0 else None
    _say(dist, f"{cfg.stage}: training {', '.join(s.modules)} ({s.n_trainable:,} parameters) for {s.total} steps "
               f"on {dist.world} worker(s) ({s.mode}), device {dist.device}{', bf16' if cfg.bf16 else ''}")
    history: list[dict[str, Any]] = []
    progress = _Progress(cfg.stage, s.step, s.total, dist)
    s.model.train()
    with _Interrupt(enabled=not dist.ray) as interrupt:
        while s.step < s.total:
            if interrupt.requested:
                folder, _ = save_checkpoint(s.stage_dir, s.step, s.model, s.opt, s.sched, s.consumed, s.processor, dist)
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


def ray_train_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's per-worker entry: the worker's rank, group size and device come from Ray Train."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    dist = Dist(rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=ray.train.torch.get_device(), ray=True)
    return train_loop(TrainConfig(**config), dist)


class _Progress:
    """Metrics to TensorBoard every 10 steps; a progress line (step of steps, metrics, tokens/s over all
    workers, ETA) at most every ``every_s`` seconds and at the last step, so a long stage stays readable."""

    def __init__(self, stage: str, start: int, total: int, dist: Dist, every_s: float = 15.0):
        self.stage, self.start, self.total, self.dist = stage, start, total, dist
        self.t0 = self.t_last = time.monotonic()
        self.tokens = 0
        self.every_s, self.said = every_s, None

    def log(self, writer, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        metrics["tokens_per_s"] = self.tokens * self.dist.world / max(now - self.t_last, 1e-9)
        self.t_last, self.tokens = now, 0
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"{self.stage}/{k}", v, step)
        if self.said is not None and now - self.said < self.every_s and step < self.total:
            return
        self.said = now
        per_step = (now - self.t0) / max(1, step - self.start)
        eta = per_step * (self.total - step)
        _say(self.dist, f"{self.stage} step {step}/{self.total}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
             + f" eta {int(eta // 60)}m{int(eta % 60):02d}s")


class _Interrupt:
    """Ctrl-C during training: the step in progress finishes, a checkpoint is saved and the run stops with
    KeyboardInterrupt (exit 130); a second Ctrl-C stops at once. Only in the main thread of a local run
    (under Ray Train the driver handles Ctrl-C)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._old = None

    def __enter__(self) -> "_Interrupt":
        if self.enabled:
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("[audiomill] stopping after this step (Ctrl-C again to stop at once)", flush=True)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._old)


def _writer(stage_dir: str):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(stage_dir, "tensorboard"))


def _say(dist: Dist, msg: str) -> None:
    if dist.rank != 0:
        return
    if dist.console:
        with open(dist.console, "a") as f:
            f.write(f"[audiomill] {msg}\n")
    if dist.ray:   # Ray Train's patched print both tees and logs a print: write to the stream once
        sys.__stdout__.write(f"[audiomill] {msg}\n")
        sys.__stdout__.flush()
    else:
        print(f"[audiomill] {msg}", flush=True)


def _report(dist: Dist, metrics: dict[str, Any], folder: str | None) -> None:
    """Every rank reports (Ray Train synchronises on it); only rank 0 hands over the checkpoint."""
    if dist.ray:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report(metrics, checkpoint=checkpoint)


CONSOLE = "console.log"


class _Echo:
    """Prints the lines rank 0 appends to the stage's ``console.log`` while Ray Train runs, for a driver
    whose Ray does not forward worker output (``audiomill run`` starts Ray quiet for its data phases)."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled = path, enabled
        self.stop = threading.Event()
        self.offset = os.path.getsize(path) if enabled and os.path.exists(path) else 0

    def __enter__(self) -> "_Echo":
        if self.enabled:
            self.thread = threading.Thread(target=self._run, name="audiomill-echo", daemon=True)
            self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            f.seek(self.offset)
            text = f.read()
        end = text.rfind("\n") + 1          # whole lines only
        if end:
            sys.stdout.write(text[:end])
            sys.stdout.flush()
            self.offset += len(text[:end].encode())

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join()


def run_stage(cfg: TrainConfig, echo: bool = False) -> dict[str, Any]:
    """Train one stage with the configured launcher; return what ``eval.json`` holds. With ``echo``, the
    training's console lines are printed here as they come (for a Ray that does not forward worker output)."""
    # Ray Train workers run in their own working directory: relative paths are resolved here.
    cfg = dataclasses.replace(cfg, **{k: os.path.abspath(getattr(cfg, k)) for k in ("examples", "output", "model_dir")
                                      if getattr(cfg, k) and "://" not in getattr(cfg, k)})
    check_data(cfg)
    if held_out_slice(cfg):
        print(f"[audiomill] {cfg.stage}: no {cfg.stage}/eval set; held out for evaluation by content: "
              f"{holdout_plan(cfg).summary()}", flush=True)
    elif not stage_shards(cfg.examples, cfg.stage, held_out=True):
        print(f"[audiomill] {cfg.stage}: no {cfg.stage}/eval set; evaluation skipped (eval_holdout=0)", flush=True)
    config = dataclasses.asdict(cfg)
    if cfg.launcher == "local":
        return train_loop(cfg)
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address) if address else ray.init(address="local", include_dashboard=False,
                                                            log_to_driver=True)
    trainer = (_trainer_without_cleaner() if _owns_cluster() else TorchTrainer)(
        ray_train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(name=f"audiomill-{cfg.stage}", storage_path=os.path.abspath(os.path.join(cfg.output, "ray")),
                             failure_config=FailureConfig(max_failures=1)),
    )
    os.makedirs(os.path.join(cfg.output, cfg.stage), exist_ok=True)
    with _Echo(os.path.join(cfg.output, cfg.stage, CONSOLE), enabled=echo):
        trainer.fit()
    with open(os.path.join(cfg.output, cfg.stage, "eval.json")) as f:
        return json.load(f)


def _owns_cluster() -> bool:
    """Whether this process started the Ray cluster it is connected to (an embedded one)."""
    from ray._private import worker

    return bool(worker._global_node is not None and worker._global_node.head)


def _trainer_without_cleaner():
    """TorchTrainer without Ray Train's PlacementGroupCleaner, for a cluster this process started.

    The cleaner is a detached actor that asks the State API every second whether the training
    controller is alive, to free its placement group should the controller die. The State API is served
    by the dashboard, which an embedded cluster runs without: every query failed and logged a warning,
    three a second. With the dashboard, its 10 s query outlives the cleaner's 12 s stop on two busy cores
    and the run ends with a traceback. On an embedded cluster the cleaner guards nothing: the cluster, its
    placement groups with it, ends with this process. On a cluster joined by address it stays.
    """
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class EmbeddedTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not isinstance(c, PlacementGroupCleanerCallback)]

    return EmbeddedTorchTrainer


def run_all(cfg: TrainConfig) -> dict[str, Any]:
    """pretrain → SFT → DPO, each stage starting from the previous stage's ``stage_checkpoint``."""
    results, model_dir = {}, cfg.model_dir
    if not any(stage_shards(cfg.examples, stage) for stage in STAGES):
        raise TrainDataError(layout_problem(cfg.examples, STAGES))
    foreign = foreign_shards(cfg.examples, STAGES)          # before any stage trains, not when one is reached
    if foreign:
        raise TrainDataError(foreign)
    for stage in STAGES:
        if not stage_shards(cfg.examples, stage):
            print(f"[audiomill] no {stage} shards in {cfg.examples}: stage skipped", flush=True)
            continue
        stage_cfg = dataclasses.replace(cfg, stage=stage, model_dir=model_dir,
                                        max_steps=cfg.stage_steps.get(stage, cfg.max_steps))
        results[stage] = run_stage(stage_cfg)
        model_dir = stage_checkpoint(cfg.output, stage)
    return results


def stage_checkpoint(output: str, stage: str) -> str:
    """What a stage hands to the next one and to evaluation: ``best/`` (the export with the best held-out
    score, when checkpoints were scored), else ``final/``."""
    best = os.path.join(output, stage, "best")
    return best if os.path.exists(os.path.join(best, "best.json")) else os.path.join(output, stage, "final")
