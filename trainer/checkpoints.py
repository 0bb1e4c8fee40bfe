"""Resumable checkpoints (``OUTPUT/<stage>/checkpoints/step-N``: model, optimiser, scheduler, stream
positions and RNG of every rank), the record of the best export, and the checkpoint a stage hands on."""

from __future__ import annotations

import glob
import json
import os
import random
import re
from typing import Any

import torch

from trainer import parallel
from trainer.console import _say
from trainer.parallel import Dist


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


def prune(stage_dir: str, keep: int) -> list[str]:
    """Remove all but the ``keep`` newest committed checkpoints (0: keep every one); the removed folders."""
    import shutil

    gone = [os.path.dirname(p) for p in checkpoints(stage_dir)[keep:]] if keep > 0 else []
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
    return gone


def save_checkpoint(stage_dir: str, step: int, model, opt, sched, consumed: dict[str, Any], processor,
                    dist: Dist, keep: int = 0) -> tuple[str | None, dict[str, Any] | None]:
    """Collective: every rank hands over its model and optimiser shards and its own stream positions and
    RNG state; rank 0 writes ``step-N/``, then leaves the ``keep`` newest (``prune``), and returns its path
    and the full model state (None elsewhere)."""
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
    prune(stage_dir, keep)
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


def _best_so_far(stage_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(stage_dir, "best", "best.json")) as f:
            found = json.load(f)
        return {"step": int(found["step"]), "score": float(found["score"]),
                "tiebreak": float(found.get("tiebreak", 0.0)), "behind": int(found.get("behind", 0))}
    except (OSError, ValueError, KeyError):
        return None


def stage_checkpoint(output: str, stage: str) -> str:
    """What a stage hands to the next one and to evaluation: ``best/`` (the export with the best held-out
    score, when checkpoints were scored), else ``final/``."""
    best = os.path.join(output, stage, "best")
    return best if os.path.exists(os.path.join(best, "best.json")) else os.path.join(output, stage, "final")

