"""Trainer throughput on CPU, measured side by side in one run.

    .venv/bin/python bench/train.py [--steps 30]

For the ``tiny`` and ``small`` presets: optimizer steps of the real loop (forward, backward, AdamW) →
samples/s and tokens/s, with the loader in-process or in a DataLoader worker (``loader_workers=1``); and
the loader alone (shard streaming, FLAC decode, encoding, token-budget batching and Whisper features),
in-process and in 2 DataLoader worker processes → samples/s, each with its ratio to the trainer's
consumption (goal ≥ 10).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipelines.demo_train import build_language_id  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import Encoder, SkipCounter, collate, token_batches  # noqa: E402
from trainer.features import LogMel  # noqa: E402
from trainer.parallel import Dist  # noqa: E402
from trainer.loader import encoded_stream, micro_batches  # noqa: E402
from trainer.steps import lm_step  # noqa: E402
from trainer.recipe import load_or_build, set_trainable  # noqa: E402


def measure(examples: Path, preset: str, steps: int, max_tokens: int, loader_workers: int = 0) -> dict[str, float]:
    cfg = TrainConfig(examples=str(examples), output="unused", preset=preset, max_tokens=max_tokens,
                      loader_workers=loader_workers)
    model, processor, _ = load_or_build(cfg)
    set_trainable(model, ["encoder", "projector", "lm"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    enc = Encoder.for_processor(processor)
    pad, fe = processor.tokenizer.pad_token_id, LogMel(processor.feature_extractor)

    def batches():
        return token_batches(encoded_stream(cfg, enc, Dist(), 0, SkipCounter()), max_tokens)

    stream = micro_batches(cfg, enc, Dist(), [0] * max(1, loader_workers), 0, pad, fe, SkipCounter())
    lm_step(model, [next(stream)], pad, fe, Dist())  # warm-up
    opt.zero_grad()
    samples = tokens = 0
    t0 = time.perf_counter()
    for batch in itertools.islice(stream, steps):
        lm_step(model, [batch], pad, fe, Dist())
        opt.step()
        opt.zero_grad()
        samples += len(batch)
        tokens += sum(len(e) for e in batch)
    train_s = time.perf_counter() - t0
    loader_samples = 0
    t0 = time.perf_counter()
    for batch in itertools.islice(batches(), steps * 3):
        collate(batch, pad, fe)
        loader_samples += len(batch)
    loader_s = time.perf_counter() - t0
    # The loader alone in 2 DataLoader worker processes (what ``loader_workers=2`` gives a trainer).
    pooled = dataclasses.replace(cfg, loader_workers=2)
    stream = micro_batches(pooled, enc, Dist(), [0, 0], 0, pad, fe, SkipCounter())
    next(stream)
    pooled_samples = 0
    t0 = time.perf_counter()
    for batch in itertools.islice(stream, steps * 6):   # long enough that the prefetched batches hardly count
        pooled_samples += len(batch)
    pooled_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    consumption = samples / train_s
    return {"params": params, "train_samples_s": consumption, "train_tokens_s": tokens / train_s,
            "loader_samples_s": loader_samples / loader_s, "ratio": (loader_samples / loader_s) / consumption,
            "pooled_samples_s": pooled_samples / pooled_s, "pooled_ratio": (pooled_samples / pooled_s) / consumption}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="audiomill-bench-train-") as tmp:
        build_language_id(Path(tmp))
        for preset, max_tokens, steps, workers in [("tiny", 2000, args.steps, 0), ("tiny", 2000, args.steps, 1),
                                                   ("small", 1200, max(3, args.steps // 3), 0)]:
            r = measure(Path(tmp), preset, steps, max_tokens, workers)
            print(f"{preset:6s} loader_workers={workers} {r['params'] / 1e6:6.2f} M params  train {r['train_samples_s']:7.1f} samples/s "
                  f"{r['train_tokens_s']:8.0f} tokens/s   loader {r['loader_samples_s']:7.1f} samples/s   "
                  f"loader/consumption {r['ratio']:5.1f}   2-process loader {r['pooled_samples_s']:7.1f} samples/s "
                  f"ratio {r['pooled_ratio']:5.1f} (goal ≥ 10)", flush=True)


if __name__ == "__main__":
    main()
