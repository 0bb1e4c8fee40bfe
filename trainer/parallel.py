"""How the model is spread over the ranks, and how its state is gathered and restored.

- ``ddp``: every rank holds the whole model (Ray Train's ``prepare_model``); the default for the presets
  built here.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``): every encoder layer, every decoder layer and
  then the whole model are sharded over the ranks, so parameters, gradients and optimiser state take
  1/world of the memory each. Frozen and trained parameters may share a layer (the recipe freezes per
  stage). With ``bf16`` the sharded fp32 master weights are gathered as bf16 for compute and gradients
  are reduced in fp32. The default for the large presets.

State goes through ``torch.distributed.checkpoint.state_dict`` in every mode, so a checkpoint holds full,
unsharded tensors keyed by parameter name: one written under FSDP resumes under DDP or in one process,
and the other way round. Gathering is collective: every rank calls ``full_state``; rank 0 receives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch

from trainer.model import LARGE_PRESETS


@dataclasses.dataclass
class Dist:
    """One worker's place in the training group."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    ray: bool = False
    console: str = ""      # rank 0 also appends what it says to this file (the stage's console.log)


def _core(model):
    """The model itself, under a DDP wrapper or not."""
    return model.module if hasattr(model, "module") else model


def strategy(parallel: str, preset: str, world: int) -> str:
    """``none`` for one rank, else ``parallel`` with ``auto`` resolved by the preset."""
    if world <= 1:
        return "none"
    if parallel == "auto":
        return "fsdp" if preset in LARGE_PRESETS else "ddp"
    return parallel


def shard_units(model) -> list[torch.nn.Module]:
    """The layers FSDP shards one by one: each audio-encoder layer and each LM decoder layer."""
    inner = model.model
    return [*inner.audio_tower.layers, *inner.language_model.layers]


def wrap(model, mode: str, device: torch.device, world: int, bf16: bool):
    """The model made ready for ``mode`` (none | ddp | fsdp); parameters already on ``device``."""
    if mode == "none":
        return model
    if mode == "ddp":
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for layer in shard_units(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


@contextlib.contextmanager
def grad_sync(model, on: bool):
    """Forward and backward inside sync the gradients over the ranks only when ``on``. An accumulated step
    turns it on for its last micro-batch alone: DDP all-reduces, or FSDP2 reduce-scatters, once per
    optimiser step instead of once per micro-batch, and the summed gradients are the same. (Under FSDP2 the
    micro-batches' gradients are held unsharded until then: memory traded for communication.)"""
    if on:
        yield
    elif hasattr(model, "no_sync"):                          # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):       # FSDP2, every sharded layer below it too
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:                                                    # one rank: nothing to sync
        yield


def autocast(mode: str, device: torch.device, bf16: bool):
    """bf16 autocast for unsharded modes (FSDP casts through its mixed-precision policy instead)."""
    if bf16 and mode != "fsdp":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_state(model, opt) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model state, optimiser state) as full CPU tensors keyed by name; collective, rank 0 receives."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, opt, options=options)


def load_full_state(model, opt, model_state: dict[str, Any], opt_state: dict[str, Any]) -> None:
    """Restore full states on every rank (each rank reads the same checkpoint and keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, opt, opt_state, options=options)
