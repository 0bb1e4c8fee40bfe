"""Writes the examples layer: ``OUTPUT_DIR/<stage>/*.tar`` (held-out sets in ``<stage>/eval/``), every
example with its audio, and one manifest at ``OUTPUT_DIR`` listing every shard (``schemas/manifest.py``)."""

from __future__ import annotations

import posixpath
from collections import Counter

import numpy as np

from processors.audio import encode_flac
from processors.shards import sha256_bytes, tar_bytes
from schemas.example import Example
from schemas.files import atomic_write
from schemas.manifest import Manifest, ShardEntry, write_manifest


def write_examples(out_dir: str, folders: dict[str, list[tuple[Example, list[np.ndarray]]]], name: str,
                   config_hash: str, per_shard: int = 100, prefix: str = "examples",
                   version: str = "1") -> Manifest:
    """``folders``: ``{"pretrain": [...], "pretrain/eval": [...], "sft": [...], …}`` → shards under each
    folder and the layer's manifest (counts by stage and task, held-out counts apart)."""
    shards: list[ShardEntry] = []
    counts: Counter = Counter()
    for folder in sorted(folders):
        examples = folders[folder]
        held_out = folder.endswith("/eval")
        for n, start in enumerate(range(0, len(examples), per_shard)):
            samples = []
            for ex, audios in examples[start:start + per_shard]:
                members = [("json", ex.to_json().encode())]
                members += [(ref.member, encode_flac(x)) for ref, x in zip(ex.audio, audios)]
                samples.append((ex.id, members))
                counts[f"{ex.stage}{'/eval' if held_out else ''}/{ex.task}"] += 1
            data, _ = tar_bytes(samples)
            rel = posixpath.join(folder, f"{prefix}-{n:06d}.tar")
            atomic_write(posixpath.join(out_dir, rel), data)
            shards.append(ShardEntry(rel, len(data), len(samples), sha256_bytes(data)))
    manifest = Manifest(layer="examples", name=name, version=version, config_hash=config_hash,
                        summary={"examples": sum(counts.values()), "examples_by_stage_task": dict(sorted(counts.items()))},
                        shards=tuple(shards))
    write_manifest(out_dir, manifest)
    return manifest
