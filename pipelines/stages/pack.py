"""Stage ``pack``: read a shard's planned samples (its ranges of the units' plan files), copy them out of
the units' part tars, apply their patches (labels carried over by dedup, then the labelers' labels, read
from where the labeler passes wrote them), and write the shard; its index rows go to ``_work/index/``, and
only the shard's name, size and hash go back."""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
from collections.abc import Iterator

import fsspec

from pipelines.passes import index_part, pass_rows, plan_url, read_rows, write_rows
from pipelines.stage import StageFn
from processors.merge import apply_patch, labelled
from processors.shards import join_samples, parse_blob, read_blob, sample_blob, sha256_bytes
from schemas.files import atomic_write
from schemas.segment import IndexRow, Segment
from schemas.shard import PlannedSample, ShardPlan, ShardResult


def planned_blobs(samples) -> Iterator[tuple[PlannedSample, bytes, dict[str, bytes]]]:
    """Each planned sample's raw tar bytes and members, read from its unit's tar (each tar opened once),
    checked to be the sample the plan names."""
    with contextlib.ExitStack() as files:
        opened: dict[str, object] = {}
        for s in samples:
            if s.part not in opened:
                opened[s.part] = files.enter_context(fsspec.open(s.part, "rb"))
            blob = read_blob(opened[s.part], s.offset, s.size)
            key, members = parse_blob(blob)
            if key != s.key:
                raise ValueError(f"{s.part} holds {key} at offset {s.offset}, not {s.key}")
            yield s, blob, dict(members)


@dataclasses.dataclass(frozen=True)
class PackJob:
    output: str
    work: str                                       # OUTPUT/_work: the labeler passes' rows, the index parts
    labels: tuple[tuple[str, bool], ...] = ()       # the passes run: (folder, holds whole labels)


class PackStage(StageFn):
    params: PackJob

    def __call__(self, plans: list[ShardPlan]) -> list[ShardResult]:
        return [self.one(plan) for plan in plans]

    def one(self, plan: ShardPlan) -> ShardResult:
        """An unpatched sample is copied as the bytes it has in its part tar; a patched one is rewritten.
        The shard's index rows go to ``_work/index/<shard>.arrow``, where the commit reads them."""
        blobs, index, offset = [], [], 0
        rows: dict[str, list] = {}
        samples = [s for r in plan.ranges for s in read_rows(plan_url(self.params.work, r.unit), PlannedSample)[r.start:r.stop]]
        for s, blob, members in planned_blobs(samples):
            seg = Segment.from_json(members["json"])
            patch = s.patch
            if self.params.labels and s.unit:
                if s.unit not in rows:
                    rows = {s.unit: pass_rows(self.params.work, self.params.labels, s.unit)}   # unit by unit
                patch = labelled(patch, seg.kind, [(found.get(s.key), whole) for found, whole in rows[s.unit]])
            if not patch.is_empty():
                seg = apply_patch(seg, patch)
                blob = sample_blob(s.key, [("json", seg.to_json().encode()), ("flac", members["flac"])])
            blobs.append(blob)
            index.append(IndexRow.of(seg, plan.name, offset, len(blob)))
            offset += len(blob)
        data = join_samples(blobs)
        atomic_write(posixpath.join(self.params.output, plan.name), data)
        write_rows(index_part(self.params.work, plan.name), index, IndexRow)
        return ShardResult(name=plan.name, sha256=sha256_bytes(data), bytes=len(data), samples=len(blobs))

