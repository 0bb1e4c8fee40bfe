"""What a kept unit becomes in the tasks after dedup, so that the driver sends small ``UnitRef``s and never
holds the corpus's segment records:

    resolve  (tasks)   UnitRef → PartRef: its segments (from its completion marker, or a parent's index) and each one's patch,
                       dedup's with what every labeler pass run so far gave it (read from storage)
    plan     (tasks)   UnitRef → UnitPlanned: the filters' verdicts; the kept samples go to the unit's plan
                       file (``_work/plan/<unit>.arrow``) and the rejects to its reject part
                       (``_work/rejects/<unit>.arrow``); only the samples' sizes, to cut the shards, and the
                       rejects' count by reason go back
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from pipelines.passes import UnitsJob, pass_rows, plan_url, reject_url, write_rows
from pipelines.stage import Resources, Stage, StageFn
from pipelines.stages.index import index_segments, read_rows
from pipelines.stages.ingest import read_marker
from processors.merge import labelled
from schemas.reject import Reject, reject_order
from schemas.shard import Patch, PlannedSample, UnitPlanned
from schemas.unit import PartRef, SegmentRef, UnitRef


def segments_of(ref: UnitRef) -> tuple[SegmentRef, ...]:
    """The unit's segments: its rows of a parent's index, or its marker's."""
    if ref.index:
        return index_segments(read_rows(ref.index, ref.index_start, ref.index_stop))
    return read_marker(ref.marker).segments if ref.marker else ()


def dedup_patches(ref: UnitRef) -> dict[str, Patch]:
    return dict(zip(ref.patch_keys, ref.patches))


def patches_of(ref: UnitRef, segments: tuple[SegmentRef, ...], job: UnitsJob) -> list[Patch]:
    """Each segment's patch: dedup's, then what every labeler pass run so far gave it."""
    dedup = dedup_patches(ref)
    rows = pass_rows(job.work, job.labels, ref.unit) if job.labels else []
    return [labelled(dedup.get(s.key, Patch()), s.kind, [(found.get(s.key), whole) for found, whole in rows])
            for s in segments]


class ResolveParts(StageFn):
    params: UnitsJob

    def __call__(self, refs: list[UnitRef]) -> list[PartRef]:
        out = []
        for ref in refs:
            segments = segments_of(ref)
            out.append(PartRef(ref.unit, ref.uri, ref.source_sha256, ref.part, segments,
                               tuple(patches_of(ref, segments, self.params))))
        return out


class PlanUnits(StageFn):
    params: UnitsJob

    def __call__(self, refs: list[UnitRef]) -> list[UnitPlanned]:
        return [self.one(ref) for ref in refs]

    def one(self, ref: UnitRef) -> UnitPlanned:
        """A sample carries dedup's patch only; pack lays the passes' labels over it. A unit left with no
        segment is rejected as a whole (``filtered``), so every input stays accounted for."""
        segments = segments_of(ref)
        filters = self.params.filters
        active = filters.active()
        final = patches_of(ref, segments, self.params) if active else [Patch()] * len(segments)
        dedup = dedup_patches(ref)
        keep, rejects = [], []
        for s, p in zip(segments, final):
            verdict = filters.verdict(s.labels.replace(**{k: getattr(p.labels, k) for k in p.labels.kinds()}),
                                      p.kind or s.kind) if active else None
            if verdict is None:
                keep.append(PlannedSample(s.key, ref.part, s.offset, s.size, dedup.get(s.key, Patch()), ref.unit))
            else:
                rejects.append(Reject(ref.uri, "filter", verdict[0],
                                      f"segment {s.key} ({s.start_s:.2f}–{s.end_s:.2f} s): {verdict[1]}"))
        if active and not keep:
            rejects.append(Reject(ref.uri, "filter", "filtered", f"all {len(segments)} segments filtered out"))
        write_rows(plan_url(self.params.work, ref.unit), keep, PlannedSample)
        if rejects:
            write_rows(reject_url(self.params.work, ref.unit), sorted(rejects, key=lambda r: reject_order(r.to_row())),
                       Reject)
        reasons = sorted(Counter(r.reason for r in rejects).items())
        return UnitPlanned(ref.unit, np.array([s.size for s in keep], "<i8").tobytes(), tuple(k for k, _ in reasons),
                           tuple(n for _, n in reasons), len(segments) - len(keep))


def unit_stages(work: str, labelers: bool) -> dict[str, Stage]:
    """The ``resolve`` stage (when there are labelers) and the ``plan`` stage of a job writing ``work``."""
    job = UnitsJob(work)
    out = {"resolve": Stage("resolve", ResolveParts, UnitRef, PartRef, Resources(num_cpus=0.25, batch_size=8), job)}
    out["plan"] = Stage("plan", PlanUnits, UnitRef, UnitPlanned, Resources(num_cpus=0.25, batch_size=8), job)
    return out if labelers else {"plan": out["plan"]}
