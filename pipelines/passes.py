"""The passes every job that writes a segments layer shares: the labeler pass over kept segments, the
filters, packing into shards, and the commit (index, rejects, manifest last)."""

from __future__ import annotations

import dataclasses
import heapq
import io
import itertools
import posixpath
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from pipelines.output import Output
from pipelines.progress import Progress
from pipelines.runtime import RayConfig, cluster_cpus, say
from pipelines.stage import Stage, apply, block_count, dataset, resumable_pass
from pipelines.stages.label import LabelerError, counted, writer
from processors.filters import FilterParams
from processors.shards import plan_shards
from schemas import arrow
from schemas.manifest import Manifest, write_manifest
from schemas.reject import REJECTS_SCHEMA, Reject, reject_order
from schemas.segment import INDEX_SCHEMA, IndexRow, SegmentAudio, SegmentLabels, UnitLabelled
from schemas.shard import ShardPlan, ShardResult, UnitPlanned
from schemas.unit import UnitRef

NOT_LABELERS = ("ingest", "resolve", "plan", "pack")


@dataclasses.dataclass(frozen=True)
class UnitsJob:
    """The params of the ``resolve`` and ``plan`` stages (``pipelines/stages/units.py``)."""

    work: str                                       # OUTPUT/_work
    labels: tuple[tuple[str, bool], ...] = ()       # the labeler passes run so far: (folder, holds whole labels)
    filters: FilterParams = FilterParams()


@dataclasses.dataclass
class Planned:
    """What the plan pass leaves on the driver: each kept unit's samples' sizes (in uri order), to cut the
    shards, and the filters' rejects counted by reason; the rejects themselves are in the units' reject
    parts, read back in order by ``reject_rows`` as the commit writes ``rejects.parquet``."""

    work: str
    sized: list[tuple[str, np.ndarray]]
    rejected: Counter                       # the filters' rejects by reason
    with_rejects: list[str]                 # the units with a reject part, in uri order
    dropped: int                            # segments the filters dropped

    def reject_rows(self) -> Iterator[dict]:
        return part_rows(reject_url(self.work, unit) for unit in self.with_rejects)


def unit_level(stage: Stage) -> bool:
    return getattr(stage.fn, "unit_level", False)


class SegmentPasses:
    """The labeler passes write each unit's labels to ``_work/<pass>/<unit>.arrow`` from the workers;
    the driver hears only that a unit is done. The driver sends each pass small ``UnitRef``s, and the
    ``resolve`` tasks read the units' segments and their labels so far; the ``plan`` tasks write each
    unit's kept samples to ``_work/plan/``, and the pack tasks read their shards' ranges of them. So the
    driver holds a few numbers per unit (``UnitRef.segment_count``, ``segment_seconds``), never the segment
    records."""

    def __init__(self, out: Output, stages: dict[str, Stage], ray: RayConfig, progress: Callable[..., Progress]):
        self.out, self.stages, self.ray, self.progress = out, stages, ray, progress
        self.ran: list[tuple[str, bool]] = []       # (folder under _work, holds whole labels) of each pass run

    @property
    def labelers(self) -> bool:
        return "read" in self.stages

    def run_labelers(self, units: list[UnitRef]) -> None:
        """The unit-level labelers (speakers) first, each as its own pass, then the per-segment ones; each
        segment's labels from a pass reach the passes after it (and the plan and pack) through storage."""
        for name, stage in self.stages.items():
            if unit_level(stage):
                self._pass(name, name, units, lambda left, s=stage: apply(self._parts(left), counted(s)),
                           SegmentLabels)
                self.ran.append((name, False))
        if any(not unit_level(s) for n, s in self.stages.items() if n not in NOT_LABELERS + ("read",)):
            def make_ds(left):
                ds = self._parts(left)
                for name, stage in self.stages.items():
                    if name not in NOT_LABELERS and not unit_level(stage):
                        ds = apply(ds, stage)
                return ds

            self._pass("label", "labels", units, make_ds, SegmentAudio)
            self.ran.append(("labels", True))

    def _pass(self, name: str, folder: str, units: list[UnitRef], make_ds, rows: type) -> None:
        """Run the pass ``name`` over the kept units whose labels are not yet under _work/<folder>/."""
        todo = [u for u in units if u.segment_count and not _exists(labels_url(self.out.work, folder, u.unit))]
        progress = self.progress(name, sum(u.segment_count for u in todo), "segments")
        write = writer(f"write_{folder}", rows, posixpath.join(self.out.work, folder))
        left = resumable_pass(name, todo, lambda u: u.unit, lambda left: apply(make_ds(left), write), UnitLabelled,
                              lambda a: a.unit, lambda u, a: progress.update(a[0].segments, audio_s=u.segment_seconds),
                              self.ray.max_pass_retries, say)
        progress.close()
        if left:
            raise LabelerError(f"{name}: {len(left)} unit(s) came back without a label row for each segment "
                               f"(first {left[0].uri}); a labeler must return one record per record it gets")

    def _units_stage(self, name: str, filters: FilterParams = FilterParams()) -> Stage:
        stage = self.stages[name]
        return dataclasses.replace(stage, params=UnitsJob(self.out.work, tuple(self.ran), filters))

    def _refs(self, units: list[UnitRef]):
        """The units as a dataset in blocks of many units and about equal segments: a table per unit would cost
        the object store (and the driver, which puts them there) far more than the rows."""
        return dataset(units, UnitRef, [float(u.segment_count) for u in units], blocks=block_count(len(units), cluster_cpus()))

    def _parts(self, units: list[UnitRef]):
        """The units' parts with their segments and patches, made in the ``resolve`` tasks."""
        return apply(self._refs(units), self._units_stage("resolve"))

    # ---- the plan ------------------------------------------------------------------------------------

    def plan(self, units: list[UnitRef], filters: FilterParams) -> Planned:
        """The plan tasks write each unit's samples to pack, and what the filters drop, to storage."""
        got: dict[str, UnitPlanned] = {}
        progress = self.progress("plan", len(units), "units")

        def on_done(_: UnitRef, r: list[UnitPlanned]) -> None:
            got[r[0].unit] = r[0]
            progress.update(1)

        resumable_pass("plan", units, lambda u: u.unit, lambda left: apply(self._refs(left), self._units_stage("plan", filters)),
                       UnitPlanned, lambda r: r.unit, on_done, self.ray.max_pass_retries, say)
        progress.close()
        order = [got[u.unit] for u in sorted(units, key=lambda u: u.uri)]
        rejected: Counter = Counter()
        for p in order:
            rejected.update(dict(zip(p.reject_reasons, p.reject_counts)))
        return Planned(self.out.work, [(p.unit, np.frombuffer(p.sizes, "<i8")) for p in order], rejected,
                       [p.unit for p in order if p.reject_counts], sum(p.dropped for p in order))

    # ---- pack ----------------------------------------------------------------------------------------

    def pack(self, sized: list[tuple[str, np.ndarray]], target_bytes: int, max_samples: int, prefix: str) -> list[ShardResult]:
        plans = plan_shards(sized, target_bytes, max_samples, prefix)
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

    def commit(self, job, shards: list[ShardResult], rejects: Iterable[pa.Table], manifest: Manifest) -> None:
        """``rejects``: ``reject_tables``."""
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


def commit_layer(out: Output, index: Iterable[pa.Table], index_schema, rejects: Iterable[pa.Table], manifest: Manifest,
                 keep_work: bool, config: dict[str, Any] | None = None) -> None:
    """The commit of any layer: the index and the rejects (``reject_tables``), each streamed into one file in
    order, the card, then the manifest last; ``_work`` goes unless kept."""
    from pipelines.card import write_card

    write_parquet(out.join("index.parquet"), index, index_schema)
    write_parquet(out.join("rejects.parquet"), rejects, REJECTS_SCHEMA)
    write_card(out.url, manifest, config)
    write_manifest(out.url, manifest)
    if not keep_work:
        out.remove_work()


def reject_tables(rejects: Iterable[Reject], *ordered: Iterable[dict], rows: int = 1 << 16) -> Iterator[pa.Table]:
    """The rows of ``rejects.parquet`` in its order (``reject_order``), ``rows`` at a time: the rejects the
    driver holds (of whole inputs: listing, decoding, dedup), sorted here, merged with row streams already
    in that order (``Planned.reject_rows``, a parent's ``rejects.parquet``), which are never held whole."""
    merged = heapq.merge(sorted((r.to_row() for r in rejects), key=reject_order), *ordered, key=reject_order)
    while batch := list(itertools.islice(merged, rows)):
        yield pa.Table.from_pylist(batch, schema=REJECTS_SCHEMA)


def part_rows(urls: Iterable[str]) -> Iterator[dict]:
    """The rows of reject parts, each of one input's rejects sorted (``PlanUnits``), given in uri order:
    in ``reject_order``, the parts of one uri merged."""
    held: list[dict] = []
    for url in urls:
        found = read_table(url).to_pylist()
        if held and found and found[0]["uri"] != held[0]["uri"]:
            yield from sorted(held, key=reject_order)
            held = []
        held += found
    yield from sorted(held, key=reject_order)


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


def plan_url(work: str, unit: str) -> str:
    """Where the plan task of ``unit`` writes its kept samples, which the pack tasks read."""
    return posixpath.join(work, "plan", unit + ".arrow")


def reject_url(work: str, unit: str) -> str:
    """Where the plan task of ``unit`` writes the filters' rejects of it, which the commit reads."""
    return posixpath.join(work, "rejects", unit + ".arrow")


def index_part(work: str, shard: str) -> str:
    """Where the pack task of ``shard`` writes its index rows."""
    return posixpath.join(work, "index", shard + ".arrow")


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
