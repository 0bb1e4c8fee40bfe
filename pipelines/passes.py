"""The passes every job that writes a segments layer shares: the labeler pass over kept segments, the
filters, packing into shards, and the commit (index, rejects, manifest last)."""

from __future__ import annotations

import dataclasses
import io
import posixpath
from collections.abc import Callable
from typing import Any

import fsspec

from pipelines.output import Output
from pipelines.progress import Progress
from pipelines.runtime import RayConfig, say
from pipelines.stage import Stage, apply, dataset, resumable_pass
from processors.filters import FilterParams
from processors.shards import plan_shards
from schemas import arrow
from schemas.manifest import Manifest, write_manifest
from schemas.reject import REJECTS_SCHEMA, Reject
from schemas.segment import INDEX_SCHEMA, SegmentLabels
from schemas.shard import Patch, PlannedSample, ShardPlan, ShardResult
from schemas.unit import PartRef, UnitResult

NOT_LABELERS = ("ingest", "pack")


def unit_level(stage: Stage) -> bool:
    return getattr(stage.fn, "unit_level", False)


class SegmentPasses:
    def __init__(self, out: Output, stages: dict[str, Stage], ray: RayConfig, progress: Callable[..., Progress]):
        self.out, self.stages, self.ray, self.progress = out, stages, ray, progress

    @property
    def labelers(self) -> bool:
        return "read" in self.stages

    def run_labelers(self, kept: list[UnitResult], patches: dict[str, Patch]) -> dict[str, Patch]:
        """The unit-level labelers (speakers) first, each as its own pass, then the per-segment ones."""
        for name, stage in self.stages.items():
            if unit_level(stage):
                patches = self.unit_pass(name, stage, kept, patches)
        if any(not unit_level(s) for n, s in self.stages.items() if n not in NOT_LABELERS + ("read", "keep_labels")):
            patches = self.label(kept, patches)
        return patches

    def unit_pass(self, name: str, stage: Stage, kept: list[UnitResult], patches: dict[str, Patch]) -> dict[str, Patch]:
        """A labeler that sees each source's segments together; the labels it gives join the patches."""
        found = self._collect(name, name, kept, lambda left: apply(dataset([_part(u, patches) for u in left], PartRef), stage))
        out = dict(patches)
        for key, r in found.items():
            kinds = {k: getattr(r.labels, k) for k in r.labels.kinds()}
            if kinds:
                p = out.get(key, Patch())
                out[key] = dataclasses.replace(p, labels=p.labels.replace(**kinds))
        return out

    def _collect(self, name: str, folder: str, kept: list[UnitResult], make_ds) -> dict[str, SegmentLabels]:
        """Run the pass ``name`` that gives a ``SegmentLabels`` per segment of each unit; a unit's rows are kept
        under _work/<folder>/ once all are in, and a rerun skips those units."""
        labels: dict[str, SegmentLabels] = {}
        todo = []
        for u in kept:
            url = self._rows_url(folder, u.unit)
            if _exists(url):
                labels.update({s.key: s for s in read_rows(url, SegmentLabels)})
            else:
                todo.append(u)
        seconds = {s.key: s.end_s - s.start_s for u in todo for s in u.segments}
        progress = self.progress(name, sum(len(u.segments) for u in todo), "segments")

        def on_unit(u: UnitResult, rows: list[SegmentLabels]) -> None:
            write_rows(self._rows_url(folder, u.unit), sorted(rows, key=lambda x: x.key), SegmentLabels)
            labels.update({s.key: s for s in rows})

        resumable_pass(name, todo, lambda u: u.unit, make_ds, SegmentLabels, lambda s: s.unit, on_unit,
                       self.ray.max_pass_retries, say, expect=lambda u: len(u.segments),
                       on_record=lambda s: progress.update(1, audio_s=seconds.get(s.key, 0.0)))
        progress.close()
        return labels

    def _rows_url(self, folder: str, unit: str) -> str:
        return posixpath.join(self.out.work, folder, unit + ".arrow")

    def label(self, kept: list[UnitResult], patches: dict[str, Patch]) -> dict[str, Patch]:
        """Run the per-segment labeler stages over the kept segments (``patches`` applied first); return the
        patches with the labels as labelled."""
        def make_ds(left):
            ds = dataset([_part(u, patches) for u in left], PartRef)
            for name, stage in self.stages.items():
                if name not in NOT_LABELERS and not unit_level(stage):
                    ds = apply(ds, stage)
            return ds

        labels = self._collect("label", "labels", kept, make_ds)
        kind = {s.key: s.kind for u in kept for s in u.segments}
        out = dict(patches)
        for key, s in labels.items():
            out[key] = dataclasses.replace(patches.get(key, Patch()), labels=s.labels,
                                           kind=s.kind if s.kind and s.kind != kind.get(key) else "")
        return out

    # ---- filters -------------------------------------------------------------------------------------

    @staticmethod
    def filter(kept: list[UnitResult], patches: dict[str, Patch], filters: FilterParams
               ) -> tuple[list[UnitResult], list[Reject], int]:
        """Drop the segments a filter rejects: (units with what is left, rejects, segments dropped). A unit
        left with no segment is rejected as a whole (``filtered``), so every input stays accounted for."""
        if not filters.active():
            return kept, [], 0
        out, rejects, dropped = [], [], 0
        for u in kept:
            keep = []
            for s in u.segments:
                p = patches.get(s.key, Patch())
                labels = s.labels.replace(**{k: getattr(p.labels, k) for k in p.labels.kinds()}) if p else s.labels
                verdict = filters.verdict(labels, p.kind or s.kind)
                if verdict is None:
                    keep.append(s)
                    continue
                dropped += 1
                rejects.append(Reject(u.uri, "filter", verdict[0],
                                      f"segment {s.key} ({s.start_s:.2f}–{s.end_s:.2f} s): {verdict[1]}"))
            if keep:
                out.append(dataclasses.replace(u, segments=tuple(keep)))
            else:
                rejects.append(Reject(u.uri, "filter", "filtered", f"all {len(u.segments)} segments filtered out"))
        return out, rejects, dropped

    # ---- pack ----------------------------------------------------------------------------------------

    def pack(self, kept: list[UnitResult], patches: dict[str, Patch], target_bytes: int, max_samples: int,
             prefix: str) -> list[ShardResult]:
        samples = [PlannedSample(s.key, u.part, s.offset, s.size, patches.get(s.key, Patch()))
                   for u in sorted(kept, key=lambda u: u.uri) for s in u.segments]
        plans = plan_shards(samples, target_bytes, max_samples, prefix)
        results: dict[str, ShardResult] = {}
        progress = self.progress("pack", len(plans), "shards")

        def on_shard(_: ShardPlan, r: list[ShardResult]) -> None:
            results[r[0].name] = r[0]
            progress.update(1)

        def make(left: list[ShardPlan]):
            stage = self.stages["pack"]
            stage = dataclasses.replace(stage, resources=dataclasses.replace(
                stage.resources, tasks=min(len(left), stage.resources.tasks)))
            return apply(dataset(left, ShardPlan), stage)

        resumable_pass("pack", plans, lambda p: p.name, make, ShardResult, lambda r: r.name, on_shard,
                       self.ray.max_pass_retries, say)
        progress.close()
        removed = self.out.remove_stale_shards(set(results))
        if removed:
            say(f"removed {len(removed)} shard(s) of an earlier attempt: {', '.join(removed[:5])}")
        return [results[p.name] for p in plans]

    # ---- commit --------------------------------------------------------------------------------------

    @staticmethod
    def commit(job, shards: list[ShardResult], rejects: list[Reject], manifest: Manifest) -> None:
        job.commit([row.to_row() for shard in shards for row in shard.index], INDEX_SCHEMA, rejects, manifest)


def commit_layer(out: Output, index: list[dict], index_schema, rejects: list[Reject], manifest: Manifest,
                 keep_work: bool, config: dict[str, Any] | None = None) -> None:
    """The commit of any layer: index and rejects (sorted), the card, then the manifest last; ``_work`` goes
    unless kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.card import write_card
    from schemas.files import atomic_write

    def parquet(rows: list[dict], schema) -> bytes:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
        return buf.getvalue()

    reject_rows = sorted((r.to_row() for r in rejects), key=lambda r: (r["uri"], r["stage"], r["reason"], r["detail"]))
    atomic_write(out.join("index.parquet"), parquet(index, index_schema))
    atomic_write(out.join("rejects.parquet"), parquet(reject_rows, REJECTS_SCHEMA))
    write_card(out.url, manifest, config)
    write_manifest(out.url, manifest)
    if not keep_work:
        out.remove_work()


def _part(u: UnitResult, patches: dict[str, Patch]) -> PartRef:
    return PartRef(u.unit, u.uri, u.file_sha256, u.part, u.segments, tuple(patches.get(s.key, Patch()) for s in u.segments))


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def write_rows(url: str, rows: list, cls: type) -> None:
    import pyarrow as pa
    import pyarrow.ipc

    from schemas.files import atomic_write

    buf = io.BytesIO()
    table = arrow.to_table(rows, cls)
    with pa.ipc.new_file(buf, table.schema) as w:
        w.write_table(table)
    atomic_write(url, buf.getvalue())


def read_rows(url: str, cls: type) -> list[Any]:
    import pyarrow as pa
    import pyarrow.ipc

    with fsspec.open(url, "rb") as f:
        return arrow.from_table(cls, pa.ipc.open_file(pa.BufferReader(f.read())).read_all())
