"""The stage's training stream: examples mixed by task weight, encoded, batched by token budget and
collated, in-process or in DataLoader workers, resumable from recorded stream positions; and how many
steps make the configured passes over it."""

from __future__ import annotations

import functools
import math
import os
import random
import signal
import sys
from collections.abc import Iterator

import torch

from trainer import holdout
from trainer.config import TrainConfig
from trainer.data import DataError, Encoder, PairEncoded, SkipCounter, decode_sample, sample_stream, token_batches
from trainer.layout import TrainDataError, stage_shards, layout_problem, held_out_slice, in_holdout
from trainer.parallel import Dist
from trainer.steps import Batch, _tensors


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

