"""Stages of the build job: ``scan`` (what the split and the mix need of every segment, no audio decoded),
``build`` (a unit's examples into its work tar, see ``processors/builders/examples.py``) and
``pack_examples`` (examples copied from the work tars into the final shards)."""

from __future__ import annotations

import dataclasses
import json
import posixpath
from itertools import accumulate

from pipelines.stage import Resources, StageFn
from pipelines.stages.label import read_part
from pipelines.stages.pack import planned_blobs
from processors.builders.examples import Builder, BuildParams
from processors.decontaminate import EvalSet
from processors.shards import join_samples, sha256_bytes, tar_bytes
from schemas.build import BuildUnit, BuiltUnit, Count, ExampleRow, ExampleShardPlan, ExampleShardResult, ScanRow
from schemas.files import atomic_write
from schemas.shard import Patch
from schemas.unit import PartRef


class ScanSegments(StageFn):
    """A unit's segments → their source, kind, duration and voice embedding."""

    def __call__(self, parts: list[PartRef]) -> list[ScanRow]:
        out = []
        for p in parts:
            for seg, _ in read_part(p):
                s = seg.labels.speakers
                out.append(ScanRow(seg.id, p.unit, seg.source.sha256, seg.kind, seg.duration_s,
                                   tuple(s.embedding) if s is not None else ()))
        return out


@dataclasses.dataclass(frozen=True)
class BuildJob:
    work: str                               # OUTPUT_DIR/_work/examples
    params: BuildParams
    eval_sets: tuple[EvalSet, ...] = ()


class BuildExamples(StageFn):
    """Loads the optional models once per actor (a policy to sample from, a caption rewriter)."""

    params: BuildJob
    resources = Resources(num_cpus=1)

    def setup(self) -> None:
        from processors.builders.caption import CaptionRewriter
        from processors.builders.policy import Policy

        p = self.params.params
        policy = Policy(p.dpo.policy_dir) if p.dpo.policy_dir else None
        rewriter = CaptionRewriter(p.caption.model, p.caption.max_new_tokens) if p.caption.model else None
        self.builder = Builder(p, list(self.params.eval_sets), policy, rewriter)

    def __call__(self, units: list[BuildUnit]) -> list[BuiltUnit]:
        return [self.one(u) for u in units]

    def one(self, u: BuildUnit) -> BuiltUnit:
        if u.part:
            part = PartRef(u.unit, u.part, "", u.part, u.segments, tuple(Patch() for _ in u.segments))
            out = self.builder.segments([(seg, flac, held) for (seg, flac), held in zip(read_part(part), u.held_out)])
        else:
            out = self.builder.voice_chat([(json.loads(i), h) for i, h in zip(u.instructions, u.instructions_held_out)])
        samples = []
        for b in out.built:
            ex = b.example
            members = [("json", ex.to_json().encode())] + [(ref.member, a) for ref, a in zip(ex.audio, b.audio)]
            samples.append((ex.id, members))
        data, written = tar_bytes(samples)
        tar = posixpath.join(self.params.work, u.unit + ".tar")
        atomic_write(tar, data)
        rows = tuple(ExampleRow(key=b.example.id, folder=b.folder, stage=b.example.stage, task=b.example.task,
                                template=b.example.template, rejected_kind=b.example.rejected_kind,
                                n_audio=len(b.example.audio), duration_s=round(sum(a.duration_s for a in b.example.audio), 3),
                                segments=tuple(b.example.provenance.get("segments") or ()),
                                labels_used=tuple(b.example.provenance.get("labels_used") or ()),
                                offset=w.offset, size=w.size)
                     for b, w in zip(out.built, written))
        return BuiltUnit(u.unit, tar, rows, tuple(out.rejects), tuple(Count(k, v) for k, v in sorted(out.counts.items())))


@dataclasses.dataclass(frozen=True)
class PackExamplesJob:
    output: str


class PackExamples(StageFn):
    params: PackExamplesJob

    def __call__(self, plans: list[ExampleShardPlan]) -> list[ExampleShardResult]:
        return [self.one(p) for p in plans]

    def one(self, plan: ExampleShardPlan) -> ExampleShardResult:
        blobs = [blob for _, blob, _ in planned_blobs(plan.samples)]
        offsets = [0, *accumulate(len(b) for b in blobs)][:-1]
        data = join_samples(blobs)
        atomic_write(posixpath.join(self.params.output, plan.name), data)
        return ExampleShardResult(plan.name, sha256_bytes(data), len(data), len(blobs),
                                  tuple(s.key for s in plan.samples), tuple(offsets), tuple(len(b) for b in blobs))
