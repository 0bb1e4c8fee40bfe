"""One optimiser step's forward and backward: the LM loss over micro-batches of sequences, DPO over pairs.
Losses are normalised by the global batch, so accumulation and sharding leave them unchanged."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from trainer import lora
from trainer.data import PairEncoded, collate
from trainer.losses import IGNORE, DPOLoss, count_targets, nll_sum, sequence_logprob
from trainer.parallel import Dist, _core, grad_sync


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
    for i, b in enumerate(batches):
        b = _to(b, dist.device)
        with grad_sync(model, i == len(batches) - 1):
            loss = nll_sum(_logits(model, b, amp), b["labels"]) * dist.world / tokens.clamp(min=1)
            loss.backward()
        total += loss.item() / dist.world
    return {"loss": _sum(dist, [total])[0], "target_tokens": tokens.item()}


def dpo_step(model, ref, micro: list[list[PairEncoded]], pad_id: int, fe, dist: Dist, loss_fn: DPOLoss,
             amp=contextlib.nullcontext) -> dict[str, float]:
    """Backward of the DPO loss over micro-batches of pairs; the reference (None: the LoRA policy with its
    adapters disabled) runs without gradients."""
    pairs = torch.tensor(_sum(dist, [sum(len(m) for m in micro)])[0], device=dist.device)
    total, correct, margin = 0.0, 0.0, 0.0
    for i, m in enumerate(micro):
        b = _to(_tensors(m, pad_id, fe, pairs=True), dist.device)
        n = len(m)
        with grad_sync(model, i == len(micro) - 1):
            logps = sequence_logprob(_logits(model, b, amp), b["labels"])
            if ref is None:        # LoRA: the starting model is the policy with its adapters disabled
                core = _core(model)
                with lora.reference(core):
                    ref_logps = sequence_logprob(_logits(core, b, amp), b["labels"])
            else:
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

