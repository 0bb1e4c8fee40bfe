"""``ray.max_block_mb``: the blocks a stage hands on are cut at that size, however much one input block
makes, so what the next stage's worker holds (a labeler actor, given the segments' audio) stays bounded."""

from __future__ import annotations

import dataclasses

from pipelines.runtime import RayConfig, init_ray
from pipelines.stage import Resources, Stage, StageFn, apply, dataset

PIECE = 256 << 10


@dataclasses.dataclass(frozen=True)
class Name:
    name: str


@dataclasses.dataclass(frozen=True)
class Blob:
    name: str
    data: bytes


class Blobs(StageFn):
    """8 records of 256 KB for each name: 2 MB a name."""

    def __call__(self, records: list[Name]) -> list[Blob]:
        return [Blob(f"{r.name}-{i}", bytes(PIECE)) for r in records for i in range(8)]


def _blocks(max_block_mb: int) -> list[tuple[int, int]]:
    """(rows, bytes) of each block the stage hands on, from one input block of 6 names (12 MB out)."""
    init_ray(RayConfig(max_block_mb=max_block_mb))
    try:
        ds = apply(dataset([Name(f"n{i}") for i in range(6)], Name, blocks=1),
                   Stage("blobs", Blobs, Name, Blob, Resources(num_cpus=0.5, batch_size=1)))
        return [(b.metadata.num_rows, b.metadata.size_bytes) for bundle in ds.iter_internal_ref_bundles() for b in bundle.blocks]
    finally:
        init_ray(RayConfig())


def test_max_block_mb_cuts_the_blocks_a_stage_hands_on(ray_cluster):
    small, large = _blocks(1), _blocks(64)
    assert sum(n for n, _ in small) == sum(n for n, _ in large) == 48
    assert len(large) == 1 and large[0][1] >= 12 * PIECE * 4          # all 12 MB in one block
    assert len(small) >= 12 and max(size for _, size in small) <= (1 << 20) + PIECE, small
