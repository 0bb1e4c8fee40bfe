"""The curate job: raw corpora → standardised, deduplicated, VAD-segmented, accounted segments in
deterministic WebDataset shards (FORMAT.md, segments layer). One Ray Data job in three passes:

1. probe   (tasks)   decode each input once: duration, hashes, fingerprint, chunk plan
   dedup   (driver)  exact and near duplicates, one copy kept deterministically
2. segment (tasks → VAD actor pool → tasks) decode chunks, silero-vad, plan + cut + encode segments
3. pack    (tasks)   copy segments into size-targeted shards; index, rejects, manifest last

Every unit writes a completion marker under ``OUTPUT/_work``; a rerun skips finished units and ends
byte-identical to an uninterrupted run. ``python -m pipelines.curate`` is the same job for ``ray job submit``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import shutil
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import fsspec
import fsspec.implementations.local

from pipelines import __version__
from pipelines.config import ConfigError, config_hash, positive
from processors.audio import iter_standardised
from processors.dedup import DedupItem, SpectralVerifier, NearParams, find_duplicates
from processors.probe import Probe, ProbeParams
from processors.segment import SegmentParams
from processors.sources import FORMATS, InputItem, SourceError, SourceSpec, check_source, list_inputs
from processors.vad import VadParams
from schemas.reject import Reject

MANIFEST_SCHEMA = "audiomill.manifest/1"


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    min_matches: int = 12
    min_fraction: float = 0.2
    min_coverage: float = 0.9
    verify: bool = True          # confirm near candidates on dense fingerprints (decodes both files)


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    target_mb: float = 64.0
    max_samples: int = 10000
    prefix: str = "segments"


@dataclasses.dataclass(frozen=True)
class RayConfig:
    address: str = ""            # "" → RAY_ADDRESS if set, else an embedded local Ray
    num_cpus: int = 0            # embedded Ray only; 0 → all cores
    object_store_mb: int = 1024  # embedded Ray only
    vad_actors: int = 0          # 0 → one per 2 CPUs, at least 1
    task_num_cpus: float = 1.0   # CPUs reserved per decode / cut / pack task
    decode_tasks: int = 0        # decode tasks in flight; 0 → 2 per VAD actor (bounds decoded audio in memory)
    vad_batch_size: int = 4
    vad_num_cpus: float = 0.5
    vad_num_gpus: float = 0.0
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class ErrorConfig:
    max_reject_fraction: float = 0.5
    min_inputs: int = 100        # the budget applies from this many inputs on


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    inputs: list[str] = dataclasses.field(default_factory=list)
    output: str = ""
    sources: list[SourceSpec] = dataclasses.field(default_factory=list)
    license: str = "unknown"     # for inputs given on the command line
    split: str = "train"
    name: str = "audiomill-segments"
    version: str = "1"
    parent_version: str = ""
    keep_work: bool = False
    audio: ProbeParams = ProbeParams()
    dedup: DedupConfig = DedupConfig()
    vad: VadParams = VadParams()
    segment: SegmentParams = SegmentParams()
    shards: ShardConfig = ShardConfig()
    ray: RayConfig = RayConfig()
    errors: ErrorConfig = ErrorConfig()

    def all_sources(self) -> list[SourceSpec]:
        return list(self.sources) + [parse_input(s, self.license, self.split) for s in self.inputs]

    def validate(self) -> list[str]:
        problems: list[str] = []
        if not self.output:
            problems.append("output: an OUTPUT_DIR is required")
        if not self.inputs and not self.sources:
            problems.append("inputs: at least one INPUT (or a sources: entry) is required")
        for spec in self.all_sources():
            problems += check_source(spec)
        positive(problems, **{"audio.chunk_s": self.audio.chunk_s, "audio.block_s": self.audio.block_s,
                              "vad.max_segment_s": self.vad.max_segment_s, "shards.target_mb": self.shards.target_mb,
                              "shards.max_samples": self.shards.max_samples,
                              "ray.vad_batch_size": self.ray.vad_batch_size, "ray.vad_num_cpus": self.ray.vad_num_cpus})
        if not 0 < self.vad.threshold < 1 or not 0 < self.vad.neg_threshold <= self.vad.threshold:
            problems.append(f"vad: need 0 < neg_threshold ≤ threshold < 1, got {self.vad.neg_threshold}, {self.vad.threshold}")
        if self.vad.max_segment_s > 30.0:
            problems.append(f"vad.max_segment_s: {self.vad.max_segment_s} exceeds the encoder window of 30 s")
        if self.vad.max_segment_s <= 4 * self.vad.pad_s:
            problems.append("vad.pad_s: too large for vad.max_segment_s")
        if self.audio.chunk_s < 2 * self.vad.max_segment_s:
            problems.append(f"audio.chunk_s: must be at least 2 × vad.max_segment_s ({2 * self.vad.max_segment_s})")
        if not 0 < self.errors.max_reject_fraction <= 1:
            problems.append("errors.max_reject_fraction: must be in (0, 1]")
        return problems


def parse_input(text: str, license: str, split: str) -> SourceSpec:
    """``"esc50:/data/meta/esc50.csv"`` → SourceSpec(format="esc50", …); a plain path or URL → auto."""
    fmt, sep, rest = text.partition(":")
    if sep and fmt in FORMATS and not rest.startswith("//"):
        return SourceSpec(path=rest, format=fmt, license=license, split=split)
    return SourceSpec(path=text, license=license, split=split)


# ---- the job ---------------------------------------------------------------------------------------

class OutputConflict(RuntimeError):
    """OUTPUT_DIR holds work of a different configuration."""


class ErrorBudgetExceeded(RuntimeError):
    """Too many inputs were rejected: likely a systematic problem, not bad media."""


def _unit(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:20]


def _say(msg: str) -> None:
    print(f"[audiomill] {msg}", flush=True)


def init_ray(cfg: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=cfg.num_cpus or os.cpu_count(), include_dashboard=False,
                 object_store_memory=cfg.object_store_mb << 20, log_to_driver=False)
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress and sys.stderr.isatty()
    ctx.print_on_execution_start = False
    if not ctx.enable_progress_bars:
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def run(cfg: CurateConfig) -> dict[str, Any]:
    """Run the whole job; return the summary (also printed). Safe to rerun after a crash."""
    t0 = time.monotonic()
    fs, out_path = fsspec.core.url_to_fs(cfg.output)
    out = cfg.output.rstrip("/")
    work = posixpath.join(out, "_work")
    digest = config_hash(cfg, exclude=("output", "ray", "keep_work"))
    if fs.exists(posixpath.join(out_path, "manifest.json")):
        manifest = json.loads(fs.cat(posixpath.join(out_path, "manifest.json")))
        if manifest.get("config_hash") != digest:
            raise OutputConflict(f"{cfg.output} already holds a dataset made with another configuration")
        _say(f"{cfg.output} is already complete")
        return manifest["summary"]
    _claim_work(fs, work, digest)

    items, rejects = _list_all(cfg)
    seen = len(items) + len(rejects)   # every listed input; each ends accepted or with one reject
    init_ray(cfg.ray)
    t_ray = time.monotonic()
    _say(f"{len(items)} inputs listed, {len(rejects)} rejected while listing; Ray ready in {t_ray - t0:.1f} s")

    probes, probe_rejects = _probe_pass(cfg, items, work)
    t_probe = time.monotonic()
    rejects += probe_rejects
    _check_budget(cfg, seen, len(rejects))
    kept, dup_rejects = _dedup(cfg, probes)
    rejects += dup_rejects
    t_dedup = time.monotonic()
    _say(f"probed: {len(probes)} decodable, {len(probe_rejects)} rejected in {t_probe - t_ray:.1f} s; "
         f"{len(dup_rejects)} duplicates found in {t_dedup - t_probe:.1f} s")

    by_uri = {it.uri: it for it in items}
    units, seg_rejects = _segment_pass(cfg, [by_uri[p.uri] for p in kept], {p.uri: p for p in kept}, work)
    rejects += seg_rejects
    plans = _plan(cfg, units)
    t_seg = time.monotonic()
    _say(f"segmented: {sum(len(u[1]) for u in units)} segments in {t_seg - t_dedup:.1f} s; packing {len(plans)} shards")
    shards, index_rows = _pack(cfg, plans, out)
    _say(f"packed in {time.monotonic() - t_seg:.1f} s")

    summary = _summary(seen, rejects, index_rows, sum(p.duration_s for p in probes),
                       time.monotonic() - t0, time.monotonic() - t_ray)
    _commit(cfg, fs, out, digest, shards, index_rows, rejects, summary)
    if not cfg.keep_work:
        _remove_tree(fs, fsspec.core.url_to_fs(work)[1])
    print(format_summary(summary), flush=True)
    return summary


def _remove_tree(fs, path: str) -> None:
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        shutil.rmtree(path)   # fsspec's local rm needs a current directory, which a job's may have lost
    else:
        fs.rm(path, recursive=True)


def _claim_work(fs, work: str, digest: str) -> None:
    path = fsspec.core.url_to_fs(work)[1]
    marker = posixpath.join(path, "config.json")
    if fs.exists(marker):
        if json.loads(fs.cat(marker)).get("config_hash") != digest:
            raise OutputConflict(f"{posixpath.dirname(work)} holds unfinished work of another configuration; "
                                 "use a new OUTPUT_DIR or remove its _work/")
        _say("resuming: finished units are skipped")
        return
    fs.makedirs(path, exist_ok=True)
    with fs.open(marker, "w") as f:
        f.write(json.dumps({"config_hash": digest}))


def _list_all(cfg: CurateConfig) -> tuple[list[InputItem], list[Reject]]:
    items: dict[str, InputItem] = {}
    rejects: list[Reject] = []
    for spec in cfg.all_sources():
        try:
            found, bad = list_inputs(spec)
        except SourceError as e:
            raise ConfigError([str(e)]) from None
        rejects += bad
        for it in found:
            if it.uri in items:
                rejects.append(Reject(it.uri, "list", "listed_twice", f"also in corpus {items[it.uri].corpus}"))
            else:
                items[it.uri] = it
    return sorted(items.values(), key=lambda it: it.uri), rejects


def _dataset(rows: list[dict], blocks: int):
    import ray

    return ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), blocks)))


def _probe_pass(cfg: CurateConfig, items: list[InputItem], work: str) -> tuple[list[Probe], list[Reject]]:
    from pipelines.stages import probe_batch, read_json

    fs, wpath = fsspec.core.url_to_fs(work)
    done = {posixpath.basename(p)[:-5] for p in fs.glob(posixpath.join(wpath, "probe", "*.json"))}
    todo = [{**it.to_row(), "unit": _unit(it.uri)} for it in items if _unit(it.uri) not in done]
    if todo:
        ds = _dataset(todo, 4 * _cpus()).map_batches(
            probe_batch, batch_size=1, num_cpus=1,
            fn_kwargs={"work": work, "params": cfg.audio, "fingerprint": cfg.dedup.near})
        for _ in ds.iter_batches(batch_size=None):
            pass
    probes, rejects = [], []
    for it in items:
        result = read_json(posixpath.join(work, "probe", _unit(it.uri) + ".json"))
        if result["ok"]:
            probes.append(Probe.from_json_dict(result["probe"]))
        else:
            rejects.append(Reject(it.uri, "probe", result["reason"], result["detail"]))
    return probes, rejects


def _cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _check_budget(cfg: CurateConfig, seen: int, rejected: int) -> None:
    e = cfg.errors
    if seen >= e.min_inputs and rejected > e.max_reject_fraction * seen:
        raise ErrorBudgetExceeded(f"{rejected} of {seen} inputs rejected (> errors.max_reject_fraction "
                                  f"{e.max_reject_fraction}); see the reasons in {cfg.output}/_work/probe")


def _dedup(cfg: CurateConfig, probes: list[Probe]) -> tuple[list[Probe], list[Reject]]:
    if not (cfg.dedup.exact or cfg.dedup.near):
        return probes, []
    # Keep lossless over lossy, then the longest, then the first by uri.
    items = [DedupItem(p.uri, p.pcm_sha256 if cfg.dedup.exact else p.uri, p.fingerprint,
                       (not p.lossless, -p.duration_s, p.uri)) for p in probes]
    d = cfg.dedup
    near = NearParams(d.min_matches, d.min_fraction, min_coverage=d.min_coverage) if d.near else None
    dups = find_duplicates(items, near, SpectralVerifier(lambda uri: iter_standardised(uri)) if d.verify else None)
    rejects = [Reject(uri, "dedup", "duplicate", f"{how} duplicate", duplicate_of=of)
               for uri, (of, how) in sorted(dups.items())]
    return [p for p in probes if p.uri not in dups], rejects


def _segment_pass(cfg: CurateConfig, items: list[InputItem], probes: dict[str, Probe], work: str):
    import ray
    from pipelines.stages import CudaVadStage, VadStage, cut_batch, decode_batch, read_json

    fs, wpath = fsspec.core.url_to_fs(work)
    done = {posixpath.basename(p)[:-5] for p in fs.glob(posixpath.join(wpath, "parts", "*.json"))}
    rows = []
    for it in items:
        p = probes[it.uri]
        for i, (s, e) in enumerate(p.chunks):
            if f"{_unit(it.uri)}-{i:05d}" not in done:
                rows.append({"unit": _unit(it.uri), "chunk": i, "n_chunks": len(p.chunks), "uri": it.uri,
                             "start_s": s, "end_s": e, "file_sha256": p.file_sha256,
                             "item": json.dumps(it.to_row())})
    if rows:
        r = cfg.ray
        actors = r.vad_actors or max(1, _cpus() // 2)
        ds = (_dataset(rows, 4 * _cpus())
              .map_batches(decode_batch, batch_size=1, num_cpus=r.task_num_cpus,
                           compute=ray.data.TaskPoolStrategy(size=r.decode_tasks or 2 * actors))
              .map_batches(CudaVadStage if r.vad_num_gpus else VadStage, batch_size=r.vad_batch_size,
                           num_cpus=r.vad_num_cpus, num_gpus=r.vad_num_gpus,
                           compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors))
              .map_batches(cut_batch, batch_size=1, num_cpus=r.task_num_cpus,
                           fn_kwargs={"work": work, "params": cfg.segment, "vad": cfg.vad}))
        for _ in ds.iter_batches(batch_size=None):
            pass
    units, rejects = [], []
    for it in items:
        markers = [read_json(posixpath.join(work, "parts", f"{_unit(it.uri)}-{i:05d}.json"))
                   for i in range(len(probes[it.uri].chunks))]
        failed = [m for m in markers if not m["ok"]]
        if failed:
            rejects.append(Reject(it.uri, "segment", failed[0]["reason"], failed[0]["detail"]))
            continue
        samples = [(m["chunk"], s) for m in markers for s in m["samples"]]
        if not samples:
            rejects.append(Reject(it.uri, "segment", "no_segments", "no speech or sound segment survived"))
            continue
        for m in markers:
            if m["samples"]:
                units.append((posixpath.join(work, "parts", f"{_unit(it.uri)}-{m['chunk']:05d}.tar"),
                              [tuple(s) for s in m["samples"]]))
    return units, rejects


def _plan(cfg: CurateConfig, units):
    from processors.shards import plan_shards

    return plan_shards(units, int(cfg.shards.target_mb * (1 << 20)), cfg.shards.max_samples, cfg.shards.prefix)


def _pack(cfg: CurateConfig, plans, out: str):
    from pipelines.stages import pack_batch
    from schemas.segment import Segment, to_index_row

    if not plans:
        return [], []
    rows = [{"plan": json.dumps(dataclasses.asdict(p))} for p in plans]
    ds = _dataset(rows, len(rows)).map_batches(pack_batch, batch_size=1, num_cpus=1, fn_kwargs={"output": out})
    packed = sorted(ds.take_all(), key=lambda r: r["name"])
    shards, index = [], []
    for r in packed:
        shards.append({"name": r["name"], "bytes": int(r["bytes"]), "samples": int(r["count"]), "sha256": r["sha256"]})
        for key, offset, size, record in json.loads(r["placements"]):
            index.append(to_index_row(Segment.from_json(record), r["name"], offset, size))
    return shards, index


def _summary(seen: int, rejects: list[Reject], index_rows, decoded_s: float, wall_s: float,
             job_s: float) -> dict[str, Any]:
    reasons = Counter(r.reason for r in rejects)
    accepted = len({r["uri"] for r in index_rows})
    return {
        "inputs_seen": seen,
        "accepted": accepted,
        "rejected": len(rejects),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "segments": len(index_rows),
        "segments_by_kind": dict(sorted(Counter(r["kind"] for r in index_rows).items())),
        "hours_by_kind": {k: round(v / 3600, 4) for k, v in sorted(_seconds_by_kind(index_rows).items())},
        "audio_seconds_decoded": round(decoded_s, 3),
        "wall_seconds": round(wall_s, 2),
        "audio_seconds_per_wall_second": round(decoded_s / wall_s, 2) if wall_s > 0 else 0.0,
        "job_seconds": round(job_s, 2),   # after Ray start-up
    }


def _seconds_by_kind(index_rows) -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    for r in index_rows:
        acc[r["kind"]] += r["duration_s"]
    return acc


def _commit(cfg, fs, out: str, digest: str, shards, index_rows, rejects: list[Reject], summary) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from processors.shards import atomic_write
    from schemas.reject import REJECTS_SCHEMA
    from schemas.segment import INDEX_SCHEMA, SEGMENT_SCHEMA

    def parquet(rows, schema) -> bytes:
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
        return buf.getvalue()

    index_rows = sorted(index_rows, key=lambda r: (r["shard"], r["offset"]))
    reject_rows = sorted((r.to_row() for r in rejects), key=lambda r: (r["uri"], r["stage"], r["reason"]))
    atomic_write(posixpath.join(out, "index.parquet"), parquet(index_rows, INDEX_SCHEMA))
    atomic_write(posixpath.join(out, "rejects.parquet"), parquet(reject_rows, REJECTS_SCHEMA))
    stable = {k: v for k, v in summary.items() if k not in ("wall_seconds", "audio_seconds_per_wall_second", "job_seconds")}
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "layer": "segments",
        "record_schema": SEGMENT_SCHEMA,
        "name": cfg.name,
        "version": cfg.version,
        "parent_version": cfg.parent_version or None,
        "config_hash": digest,
        "code_version": f"audiomill {__version__}",
        "summary": stable,
        "shards": shards,
    }
    atomic_write(posixpath.join(out, "manifest.json"),
                 (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def format_summary(s: dict[str, Any]) -> str:
    lines = ["", "audiomill curate summary", "-" * 44]
    row = lambda k, v: lines.append(f"{k:<32}{v:>12}")  # noqa: E731
    row("inputs seen", s["inputs_seen"])
    row("accepted", s["accepted"])
    row("rejected", s["rejected"])
    for reason, n in s["rejected_by_reason"].items():
        row(f"  {reason}", n)
    row("segments", s["segments"])
    for kind, h in s["hours_by_kind"].items():
        row(f"  {kind} (segments / hours)", f"{s['segments_by_kind'][kind]} / {h:.4f}")
    row("audio seconds decoded", f"{s['audio_seconds_decoded']:.1f}")
    if "wall_seconds" in s:
        row("wall seconds", f"{s['wall_seconds']:.1f}")
        row("audio-s per wall-s", f"{s['audio_seconds_per_wall_second']:.1f}")
        row("  after Ray start-up", f"{s['audio_seconds_decoded'] / max(s['job_seconds'], 1e-9):.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(["curate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
