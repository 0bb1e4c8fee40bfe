"""Gradient sync once per optimiser step: an accumulated step's micro-batches sync only on the last, under DDP
and FSDP2 (two processes over gloo), with the same gradients as syncing every micro-batch."""

from __future__ import annotations

import contextlib
import socket
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer import steps
from trainer.parallel import Dist, grad_sync
from trainer.steps import Batch

WORLD, MICRO = 2, 3


def _toy() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def _micro_batches(rank: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(5, 8, generator=g) for _ in range(MICRO)]


def _loss(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).pow(2).sum() / MICRO


def _accumulate(model, rank: int, last_only: bool) -> None:
    for i, x in enumerate(_micro_batches(rank)):
        with grad_sync(model, i == MICRO - 1) if last_only else contextlib.nullcontext():
            _loss(model, x).backward()


def _worker(rank: int, port: int, out: str) -> None:
    import os

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    calls = {"n": 0}
    reduce_scatter = dist.reduce_scatter_single

    def counted(*args, **kwargs):
        calls["n"] += 1
        return reduce_scatter(*args, **kwargs)

    dist.reduce_scatter_single = counted                # FSDP2 looks it up on torch.distributed at each call

    def hook(state, bucket):
        calls["n"] += 1
        return allreduce_hook(state, bucket)

    found = {}
    for mode in ("ddp", "fsdp"):
        for last_only in (False, True):
            model = _toy()
            if mode == "ddp":
                model = torch.nn.parallel.DistributedDataParallel(model)
                model.register_comm_hook(None, hook)
                params = lambda: model.module.parameters()          # noqa: E731
            else:
                for layer in (model[0], model[2]):
                    fully_shard(layer)
                fully_shard(model)
                params = lambda: model.parameters()                 # noqa: E731
            calls["n"] = 0
            _accumulate(model, rank, last_only)
            n = calls["n"]
            grads = [(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone() for p in params()]
            found[(mode, last_only)] = (n, grads)
    if rank == 0:
        torch.save(found, out)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_and_fsdp_sync_once_per_step_with_the_same_gradients(tmp_path):
    out = str(tmp_path / "found.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    found = torch.load(out, weights_only=True)
    # The gradients of the mean over ranks of each rank's accumulated loss, in one process.
    model = _toy()
    for rank in range(WORLD):
        for x in _micro_batches(rank):
            (_loss(model, x) / WORLD).backward()
    want = [p.grad for p in model.parameters()]
    for mode in ("ddp", "fsdp"):
        every, every_grads = found[(mode, False)]
        once, once_grads = found[(mode, True)]
        # A step's communication: DDP all-reduces its one bucket, FSDP2 reduce-scatters each of the two
        # sharded layers; syncing every micro-batch does that MICRO times.
        assert (every, once) == ({"ddp": 3, "fsdp": 6}[mode], {"ddp": 1, "fsdp": 2}[mode]), mode
        for got in (every_grads, once_grads):
            assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want)), mode


class _Lm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(12, 12)

    def forward(self, input_ids):
        return types.SimpleNamespace(logits=self.emb(input_ids))


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    b = Batch([None])
    ids = torch.randint(0, 12, (2, 6), generator=g)
    b.tensors = {"input_ids": ids, "labels": ids.clone()}
    return b


def test_an_accumulated_step_turns_sync_on_for_its_last_micro_batch_only(monkeypatch):
    seen = []

    @contextlib.contextmanager
    def recorded(model, on):
        seen.append(on)
        yield

    monkeypatch.setattr(steps, "grad_sync", recorded)
    model = _Lm()
    out = steps.lm_step(model, [_batch(i) for i in range(4)], 0, None, Dist())
    assert seen == [False, False, False, True] and out["loss"] > 0
    assert all(p.grad is not None for p in model.parameters())
    seen.clear()
    steps.lm_step(model, [_batch(9)], 0, None, Dist())
    assert seen == [True]


@pytest.mark.parametrize("on", [False, True])
def test_in_one_process_grad_sync_changes_nothing(on):
    model, x = _toy(), _micro_batches(0)[0]
    with grad_sync(model, on):
        _loss(model, x).backward()
    assert all(p.grad is not None for p in model.parameters())
