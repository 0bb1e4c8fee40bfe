"""The passes every job that writes a segments layer shares: the labeler pass over kept segments, the
filters, packing into shards, and the commit (index, rejects, manifest last)."""

from __future__ import annotations

import dataclasses
import io
import posixpath
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec
import pyarrow as pa

from pipelines.output import Output
from pipelines.progress import Progress
from pipelines.runtime import RayConfig, cluster_cpus, say
from pipelines.stage import Stage, apply, block_count, dataset, resumable_pass
from pipelines.stages.label import LabelerError, counted, writer
from processors.filters import FilterParams
from processors.merge import labelled
from processors.shards import plan_shards
from schemas import arrow
from schemas.manifest import Manifest, write_manifest
from schemas.reject import REJECTS_SCHEMA, Reject
from schemas.segment import INDEX_SCHEMA, IndexRow, SegmentAudio, SegmentLabels, UnitLabelled
from schemas.shard import Patch, PlannedSample, ShardPlan, ShardResult
from schemas.unit import PartRef, UnitResult

NOT_LABELERS = ("ingest", "pack")


def unit_level(stage: Stage) -> bool:
    return getattr(stage.fn, "unit_level", False)


class SegmentPasses:
    """The labeler passes write each unit's labels to ``_work/<pass>/<unit>.arrow`` from the workers;
    the driver hears only that a unit is done. The plan reads them back one unit at a time, and the pack
    tasks read them for their own samples."""

    def __init__(self, out: Output, stages: dict[str, Stage], ray: RayConfig, progress: Callable[..., Progress]):
        self.out, self.stages, self.ray, self.progress = out, stages, ray, progress
        self.ran: list[tuple[str, bool]] = []       # (folder under _work, holds whole labels) of each pass run

    @property
    def labelers(self) -> bool:
        return "read" in self.stages

    def run_labelers(self, kept: list[UnitResult], patches: dict[str, Patch]) -> None:
        """The unit-level labelers (speakers) first, each as its own pass, then the per-segment ones; each
        segment's labels from a pass reach the passes after it (and the plan and pack) through storage."""
        for name, stage in self.stages.items():
            if unit_level(stage):
                self._pass(name, name, kept, lambda left, s=stage: apply(self._parts(left, patches), counted(s)),
                           SegmentLabels)
                self.ran.append((name, False))
        if any(not unit_level(s) for n, s in self.stages.items() if n not in NOT_LABELERS + ("read",)):
            def make_ds(left):
                ds = self._parts(left, patches)
                for name, stage in self.stages.items():
                    if name not in NOT_LABELERS and not unit_level(stage):
                        ds = apply(ds, stage)
                return ds

            self._pass("label", "labels", kept, make_ds, SegmentAudio)
            self.ran.append(("labels", True))

    def _pass(self, name: str, folder: str, kept: list[UnitResult], make_ds, rows: type) -> None:
        """Run the pass ``name`` over the kept units whose labels are not yet under _work/<folder>/."""
        todo = [u for u in kept if u.segments and not _exists(labels_url(self.out.work, folder, u.unit))]
        progress = self.progress(name, sum(len(u.segments) for u in todo), "segments")
        write = writer(f"write_{folder}", rows, posixpath.join(self.out.work, folder))
        left = resumable_pass(name, todo, lambda u: u.unit, lambda left: apply(make_ds(left), write), UnitLabelled,
                              lambda a: a.unit, lambda u, a: progress.update(a[0].segments, audio_s=_seconds(u)),
                              self.ray.max_pass_retries, say)
        progress.close()
        if left:
            raise LabelerError(f"{name}: {len(left)} unit(s) came back without a label row for each segment "
                               f"(first {left[0].uri}); a labeler must return one record per record it gets")

    def _labelled(self, u: UnitResult, patches: dict[str, Patch]) -> list[Patch]:
        """Each segment's patch: dedup's, then what every pass run so far gave it (read from storage)."""
        rows = pass_rows(self.out.work, self.ran, u.unit)
        return [labelled(patches.get(s.key, Patch()), s.kind, [(found.get(s.key), whole) for found, whole in rows])
                for s in u.segments]

    def _parts(self, units: list[UnitResult], patches: dict[str, Patch]):
        """The units' parts as a dataset in blocks of many units: a table per unit, with the labels' deep
        schema, would cost the object store (and the driver, which puts them there) far more than the rows."""
        parts = [PartRef(u.unit, u.uri, u.file_sha256, u.part, u.segments, tuple(self._labelled(u, patches)))
                 for u in units]
        return dataset(parts, PartRef, [float(len(p.segments)) for p in parts], blocks=block_count(len(parts), cluster_cpus()))

    # ---- the plan ------------------------------------------------------------------------------------

    def plan(self, kept: list[UnitResult], patches: dict[str, Patch], filters: FilterParams
             ) -> tuple[list[PlannedSample], list[Reject], int]:
        """The samples to pack, in uri order, and what the filters drop: (samples, rejects, segments
        dropped). A unit left with no segment is rejected as a whole (``filtered``), so every input stays
        accounted for. A sample carries dedup's patch only; pack lays the passes' labels over it."""
        samples, rejects, dropped = [], [], 0
        active = filters.active()
        for u in sorted(kept, key=lambda u: u.uri):
            final = self._labelled(u, patches) if active else [Patch()] * len(u.segments)
            keep = []
            for s, p in zip(u.segments, final):
                verdict = filters.verdict(s.labels.replace(**{k: getattr(p.labels, k) for k in p.labels.kinds()}),
                                          p.kind or s.kind) if active else None
                if verdict is None:
                    keep.append(PlannedSample(s.key, u.part, s.offset, s.size, patches.get(s.key, Patch()), u.unit))
                    continue
                dropped += 1
                rejects.append(Reject(u.uri, "filter", verdict[0],
                                      f"segment {s.key} ({s.start_s:.2f}–{s.end_s:.2f} s): {verdict[1]}"))
            if keep or not active:
                samples += keep
            else:
                rejects.append(Reject(u.uri, "filter", "filtered", f"all {len(u.segments)} segments filtered out"))
        return samples, rejects, dropped

    # ---- pack ----------------------------------------------------------------------------------------

    def pack(self, samples: list[PlannedSample], target_bytes: int, max_samples: int, prefix: str) -> list[ShardResult]:
        plans = plan_shards(samples, target_bytes, max_samples, prefix)
        results: dict[str, ShardResult] = {}
        progress = self.progress("pack", len(plans), "shards")

        def on_shard(_: ShardPlan, r: list[ShardResult]) -> None:
            results[r[0].name] = r[0]
            progress.update(1)

        def make(left: list[ShardPlan]):
            stage = self.stages["pack"]
            stage = dataclasses.replace(stage, params=dataclasses.replace(stage.params, labels=tuple(self.ran)),
                                        resources=dataclasses.replace(stage.resources,
                                                                      tasks=min(len(left), stage.resources.tasks)))
            return apply(dataset(left, ShardPlan), stage)

        resumable_pass("pack", plans, lambda p: p.name, make, ShardResult, lambda r: r.name, on_shard,
                       self.ray.max_pass_retries, say)
        progress.close()
        removed = self.out.remove_stale_shards(set(results))
        if removed:
            say(f"removed {len(removed)} shard(s) of an earlier attempt: {', '.join(removed[:5])}")
        return [results[p.name] for p in plans]

    # ---- commit --------------------------------------------------------------------------------------

    def index_parts(self, shards: list[ShardResult]) -> Iterator[pa.Table]:
        """The index rows each pack task wrote, one shard's table at a time, in shard order."""
        for shard in shards:
            yield read_table(index_part(self.out.work, shard.name))

    def totals(self, shards: list[ShardResult]) -> IndexTotals:
        totals = IndexTotals()
        for table in self.index_parts(shards):
            totals.add(arrow.from_table(IndexRow, table))
        return totals

    def commit(self, job, shards: list[ShardResult], rejects: list[Reject], manifest: Manifest) -> None:
        job.commit(self.index_parts(shards), INDEX_SCHEMA, rejects, manifest)


class IndexTotals:
    """What a job's summary says of its index, added up one shard's rows at a time (the rows come in uri
    order, so a new uri is a new input)."""

    def __init__(self) -> None:
        self.segments = self.inputs = 0
        self._uri: str | None = None
        self.kinds: Counter = Counter()
        self.languages: Counter = Counter()
        self.speakers: Counter = Counter()
        self.first_events: Counter = Counter()            # every segment's first event
        self.first_sound_events: Counter = Counter()      # of sound and music segments
        self.seconds_by_kind: dict[str, float] = defaultdict(float)
        self.seconds_by_language: dict[str, float] = defaultdict(float)

    def add(self, rows: list[IndexRow]) -> None:
        for r in rows:
            self.segments += 1
            if r.uri != self._uri:
                self.inputs, self._uri = self.inputs + 1, r.uri
            self.kinds[r.kind] += 1
            self.seconds_by_kind[r.kind] += r.duration_s
            if r.language:
                self.languages[r.language] += 1
                self.seconds_by_language[r.language] += r.duration_s
            if r.speakers:
                self.speakers[str(r.speakers)] += 1
            if r.events:
                self.first_events[r.events[0]] += 1
                if r.kind != "speech":
                    self.first_sound_events[r.events[0]] += 1


def commit_layer(out: Output, index: Iterable[pa.Table], index_schema, rejects: list[Reject], manifest: Manifest,
                 keep_work: bool, config: dict[str, Any] | None = None) -> None:
    """The commit of any layer: the index (its tables streamed into one file, in order), the rejects
    (sorted), the card, then the manifest last; ``_work`` goes unless kept."""
    from pipelines.card import write_card

    reject_rows = sorted((r.to_row() for r in rejects), key=lambda r: (r["uri"], r["stage"], r["reason"], r["detail"]))
    write_parquet(out.join("index.parquet"), index, index_schema)
    write_parquet(out.join("rejects.parquet"), [pa.Table.from_pylist(reject_rows, schema=REJECTS_SCHEMA)], REJECTS_SCHEMA)
    write_card(out.url, manifest, config)
    write_manifest(out.url, manifest)
    if not keep_work:
        out.remove_work()


def write_parquet(url: str, tables: Iterable[pa.Table], schema: pa.Schema, group_rows: int = 1 << 16) -> None:
    """Stream ``tables`` into one Parquet file at ``url`` (``atomic_file``: a temporary name, then a rename
    or an upload), in row groups of ``group_rows`` rows whatever the tables' sizes, so the file depends only on
    the rows; nothing but one group is held at a time."""
    import pyarrow.parquet as pq

    from schemas.files import atomic_file

    with atomic_file(url) as local, pq.ParquetWriter(local, schema) as w:
        held: list[pa.Table] = []
        n = 0
        for table in tables:
            held.append(table.cast(schema))
            n += len(table)
            while n >= group_rows:
                whole = pa.concat_tables(held)
                w.write_table(whole.slice(0, group_rows), row_group_size=group_rows)
                held, n = [whole.slice(group_rows)], n - group_rows
        if n:
            w.write_table(pa.concat_tables(held), row_group_size=group_rows)


def labels_url(work: str, folder: str, unit: str) -> str:
    """Where the labeler pass writing ``_work/<folder>/`` keeps ``unit``'s rows."""
    return posixpath.join(work, folder, unit + ".arrow")


def pass_rows(work: str, passes, unit: str) -> list[tuple[dict[str, SegmentLabels], bool]]:
    """``unit``'s rows of each labeler pass run (``(folder, holds whole labels)``, in order), by segment key,
    with the flag that ``processors.merge.labelled`` takes."""
    return [({r.key: r for r in read_rows(labels_url(work, folder, unit), SegmentLabels)}, whole)
            for folder, whole in passes]


def index_part(work: str, shard: str) -> str:
    """Where the pack task of ``shard`` writes its index rows."""
    return posixpath.join(work, "index", shard + ".arrow")


def _seconds(u: UnitResult) -> float:
    return sum(s.end_s - s.start_s for s in u.segments)


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def write_rows(url: str, rows: list, cls: type) -> None:
    from pyarrow import ipc

    from schemas.files import atomic_write

    buf = io.BytesIO()
    table = arrow.to_table(rows, cls)
    with ipc.new_file(buf, table.schema) as w:
        w.write_table(table)
    atomic_write(url, buf.getvalue())


def read_rows(url: str, cls: type) -> list[Any]:
    return arrow.from_table(cls, read_table(url))


def read_table(url: str) -> pa.Table:
    from pyarrow import ipc

    with fsspec.open(url, "rb") as f:
        return ipc.open_file(pa.BufferReader(f.read())).read_all()
