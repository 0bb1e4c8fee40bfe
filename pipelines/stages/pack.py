"""Stage ``pack``: copy a shard's planned samples out of the units' part tars, apply their patches (labels
carried over by dedup, labels from the labelers), and write the shard; return its index rows."""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath

import fsspec

from pipelines.stage import StageFn
from processors.merge import apply_patch
from processors.shards import read_sample, sha256_bytes, tar_bytes
from schemas.files import atomic_write
from schemas.segment import IndexRow, Segment
from schemas.shard import ShardPlan, ShardResult


@dataclasses.dataclass(frozen=True)
class PackJob:
    output: str


class PackStage(StageFn):
    params: PackJob

    def __call__(self, plans: list[ShardPlan]) -> list[ShardResult]:
        return [self.one(plan) for plan in plans]

    def one(self, plan: ShardPlan) -> ShardResult:
        samples, records = [], {}
        with contextlib.ExitStack() as files:
            opened: dict[str, object] = {}
            for s in plan.samples:
                if s.part not in opened:
                    opened[s.part] = files.enter_context(fsspec.open(s.part, "rb"))
                key, members = read_sample(opened[s.part], s.offset, s.size)
                if key != s.key:
                    raise ValueError(f"{s.part} holds {key} at offset {s.offset}, not {s.key}")
                members = dict(members)
                seg = apply_patch(Segment.from_json(members["json"]), s.patch)
                records[key] = seg
                samples.append((key, [("json", seg.to_json().encode()), ("flac", members["flac"])]))
        data, written = tar_bytes(samples)
        atomic_write(posixpath.join(self.params.output, plan.name), data)
        index = tuple(IndexRow.of(records[w.key], plan.name, w.offset, w.size) for w in written)
        return ShardResult(name=plan.name, sha256=sha256_bytes(data), bytes=len(data), samples=len(written),
                           index=index)
