"""The label job: re-label an existing segments corpus — new models or settings, the same audio, no raw file
decoded again — into a new segments output whose manifest names the input as its parent.

    audiomill label SEGMENTS_DIR OUTPUT_DIR [--config FILE] [key=value ...]

Each input shard is one unit of work (resumable): its segments go through the labeler stages and the
filters, and are packed again with their new labels. The input's rejects are carried over.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time
from collections import Counter
from typing import Any

from pipelines.config import PREFIX_RE, ShardConfig, name_problems, positive, show
from pipelines.job import Job, run_job
from pipelines.output import Output, OutputError
from pipelines.card import parquet_batches, row_batches
from pipelines.passes import NOT_LABELERS, IndexTotals, SegmentPasses, reject_tables
from pipelines.runtime import RayConfig, cluster_cpus, cluster_gpus, say
from pipelines.stage import Resources, Stage
from pipelines.stages.label import LabelerError, ReadSegments, expand, labeler_stages, model_problem
from pipelines.stages.labelers import LabelParams
from pipelines.stages.pack import PackJob, PackStage
from pipelines.stages.index import RANGE_COLUMNS, IndexOrderError, ShardRanges, shard_refs
from pipelines.stages.units import unit_stages
from processors.filters import FilterParams
from schemas.manifest import Manifest, read_manifest
from schemas.segment import SegmentAudio
from schemas.shard import ShardPlan, ShardResult
from schemas.unit import PartRef


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    input: str = ""                   # a finished segments OUTPUT_DIR
    output: str = ""
    labelers: list[str] = dataclasses.field(default_factory=lambda: ["auto"])
    label: LabelParams = LabelParams()
    filters: FilterParams = FilterParams()
    name: str = ""                    # "" → the input's name
    version: str = "1"
    keep_work: bool = False
    lock_stale_s: float = 300.0
    shards: ShardConfig = ShardConfig()
    ray: RayConfig = RayConfig()

    def validate(self) -> list[str]:
        problems: list[str] = []
        if not self.input:
            problems.append("input: a SEGMENTS_DIR is required")
        if not self.output:
            problems.append("output: an OUTPUT_DIR is required")
        if self.input:
            problems += segments_input_problems(self.input)
        problems += name_problems(name=self.name, version=self.version)
        if not PREFIX_RE.fullmatch(self.shards.prefix):
            problems.append(f"shards.prefix: {show(self.shards.prefix)} must be letters, digits, '-' and '_'")
        positive(problems, **{"shards.target_mb": self.shards.target_mb, "shards.max_samples": self.shards.max_samples,
                              "lock_stale_s": self.lock_stale_s})
        problems += self.ray.problems() + self.filters.problems()
        try:
            names = expand(self.labelers, self.label)
            problems += [p for p in (model_problem(n, self.label) for n in names) if p]
            if not names:
                problems.append("labelers: none to run (labelers=[auto] finds no installed model)")
        except LabelerError as e:
            problems.append(str(e))
        if self.input and self.output:
            try:
                Output(self.output, self.shards.prefix).check_apart_from([self.input])
            except OutputError as e:
                problems.append(f"output: {e}")
        return problems


def run(cfg: LabelConfig) -> dict[str, Any]:
    return run_job("label", cfg, Output(cfg.output, cfg.shards.prefix), _work,
                   lambda summary: "\n".join(f"{k:<24}{v}" for k, v in summary.items()))


def _work(job: Job) -> dict[str, Any]:
    cfg = job.cfg
    parent = read_manifest(cfg.input)
    refs = shard_refs(cfg.input, parent)
    cpus, gpus = cluster_cpus(), cluster_gpus()
    stages = {"read": Stage("read", ReadSegments, PartRef, SegmentAudio, Resources(num_cpus=0.25))}
    stages.update({s.name: s for s in labeler_stages(cfg.labelers, cfg.label, cpus, gpus)})
    stages.update(unit_stages(job.out.work, labelers=True))
    stages["pack"] = Stage("pack", PackStage, ShardPlan, ShardResult,
                           Resources(num_cpus=1, tasks=cfg.ray.pack_tasks_on(cpus)), PackJob(cfg.output.rstrip("/"), job.out.work))
    passes = SegmentPasses(job.out, stages, cfg.ray, job.progress)
    say(f"{sum(r.segment_count for r in refs)} segments in {len(refs)} shards of {cfg.input}; labelers: "
        f"{', '.join(n for n in stages if n not in ('read',) + NOT_LABELERS)}")
    passes.run_labelers(refs)
    planned = passes.plan(refs, cfg.filters)
    s = cfg.shards
    shards = passes.pack(planned.sized, int(s.target_mb * (1 << 20)), s.max_samples, s.prefix)
    summary = _summary(parent, passes.totals(shards), planned.rejected, planned.dropped, time.monotonic() - job.t0)
    manifest = job.manifest("segments", cfg.name or parent.name, f"{parent.name}@{parent.version}", summary, shards)
    carried = (row for rows in row_batches(posixpath.join(cfg.input, "rejects.parquet")) for row in rows)
    passes.commit(job, shards, reject_tables((), carried, planned.reject_rows()), manifest)
    return summary


def segments_input_problems(url: str) -> list[str]:
    """What keeps the segments output at ``url`` from being a job's input, before any work: an unreadable,
    missing or other layer's manifest, or files that do not match it (``damaged_input``)."""
    try:
        manifest = read_manifest(url)
    except (ValueError, KeyError, OSError) as e:
        return [f"input {url!r}: its manifest.json cannot be read ({e})"[:300]]
    if manifest is None:
        return [f"input {url!r} is not a finished segments output (no manifest.json)"]
    if manifest.layer != "segments":
        return [f"input {url!r} holds the {manifest.layer} layer, not segments"]
    return damaged_input(url, manifest)


def damaged_input(url: str, manifest: Manifest, batch_rows: int = 1 << 16) -> list[str]:
    """What is wrong with a finished segments output's files against its manifest: a shard missing or of
    another size than recorded, an index row outside its shard, a shard's rows not together. Sizes only:
    reading every byte for its checksum is ``audiomill verify``'s work. The index is streamed and checked in
    Arrow, ``batch_rows`` rows at a time, never held."""
    import fsspec
    import pyarrow as pa
    import pyarrow.compute as pc

    fs, root = fsspec.core.url_to_fs(url)
    sizes = {e.name: e.bytes for e in manifest.shards}
    out = []
    for name, size in sizes.items():
        try:
            have = fs.size(posixpath.join(root, name))
        except FileNotFoundError:
            out.append(f"input {url!r}: its shard {name} is missing")
            continue
        if have != size:
            out.append(f"input {url!r}: its shard {name} has {have} bytes where its manifest says {size}")
    index = posixpath.join(url, "index.parquet")
    names, limits = pa.array(list(sizes), pa.string()), pa.array(list(sizes.values()), pa.int64())
    n, first, order = 0, None, None
    ranges = ShardRanges()                     # the shard order, checked in the same pass
    try:
        for batch in parquet_batches(index, ["key", "offset", "size", *RANGE_COLUMNS], batch_rows):
            limit = pc.take(limits, pc.index_in(batch["shard"], value_set=names))   # null: a shard not listed
            bad = pc.fill_null(pc.greater(pc.add(batch["offset"], batch["size"]), limit), True)
            found = pc.sum(bad).as_py() or 0
            if found and first is None:
                first = batch.filter(bad).slice(0, 1).to_pylist()[0]
            n += found
            if order is None:
                try:
                    ranges.add(batch)
                except IndexOrderError as e:
                    order = e
    except (OSError, ValueError, KeyError) as e:
        return out + [f"input {url!r}: its index.parquet cannot be read ({type(e).__name__})"]
    if order is not None:
        out.append(f"input {url!r}: its index.parquet is not in shard order: {order}")
    if n:
        out.append(f"input {url!r}: its index.parquet names {n} sample(s) outside their shards "
                   f"(first: {first['key']} in {first['shard']})")
    return out


def _summary(parent: Manifest, index: IndexTotals, rejected: Counter, filtered: int, wall: float) -> dict[str, Any]:
    return {
        "parent": f"{parent.name}@{parent.version}",
        "segments_in": parent.summary.get("segments"),
        "segments": index.segments,
        "segments_filtered": filtered,
        "filtered_by_reason": {k: n for k, n in sorted(rejected.items()) if k != "filtered"},
        "segments_by_kind": dict(sorted(index.kinds.items())),
        "languages": dict(sorted(index.languages.items())),
        "top_events": dict(index.first_events.most_common(10)),
        "wall_seconds": round(wall, 2),
    }
