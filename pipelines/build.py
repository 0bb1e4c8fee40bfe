"""The build job: labelled segments corpora → the examples layer (FORMAT.md), ready for ``audiomill train-all``.

    audiomill build SEGMENTS_DIR... OUTPUT_DIR [--config FILE] [--address ADDR] [key=value ...]

Stages:
1. ``scan``: each input shard's segments: source, kind, duration and voice embedding (no audio decoded).
2. The plan, on the driver: recordings joined by voice into groups, whole groups held out
   (``split.eval_fraction`` of the hours), segments chosen per kind up to ``mix.hours``; each eval corpus of
   ``decontaminate.eval_sets`` fingerprinted once.
3. ``build``: one unit per input shard (and per batch of voice-chat instructions) → its examples in
   ``_work/examples/<unit>.tar``; a finished unit is kept, and a rerun skips it.
4. ``pack_examples``: each folder's examples in id order into ``<stage>/[eval/]examples-NNNNNN.tar``.
5. The commit: ``index.parquet``, ``rejects.parquet``, then ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from pipelines.config import PREFIX_RE, name_problems, positive, show
from pipelines.job import Job, run_job
from pipelines.label import segments_input_problems
from pipelines.output import Output, OutputError
from pipelines.passes import _exists, read_rows, reject_tables, write_rows
from pipelines.runtime import RayConfig, cluster_cpus, say
from pipelines.stage import Resources, Stage, apply, dataset, resumable_pass
from pipelines.stages.build import BuildExamples, BuildJob, PackExamples, PackExamplesJob, ScanSegments
from pipelines.stages.index import shard_units
from processors.builders import chat, pretrain
from processors.builders.examples import (BuildParams, CaptionParams, DecontaminateParams, DpoParams, MixParams,
                                          SftParams)
from processors.builders.mix import diversity, select_hours
from processors.builders.split import held_out, voice_groups
from processors.decontaminate import EvalSet, eval_set
from schemas import arrow
from schemas.build import (EXAMPLE_INDEX_SCHEMA, BuildUnit, BuiltUnit, ExampleIndexRow, ExampleRow, ExampleShardPlan,
                           ExampleShardResult, ScanRow)
from schemas.example import STAGES
from schemas.manifest import Manifest, read_manifest
from schemas.reject import Reject
from schemas.shard import Patch, PlannedSample
from schemas.unit import PartRef, UnitResult

INSTRUCTIONS_PER_UNIT = 8


@dataclasses.dataclass(frozen=True)
class SplitParams:
    eval_fraction: float = 0.1        # share of the hours held out, by recording and voice
    same_voice: float = 0.8           # cosine similarity of voice embeddings taken as one speaker


@dataclasses.dataclass(frozen=True)
class ExampleShards:
    per_shard: int = 500              # examples per shard
    prefix: str = "examples"


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    inputs: list[str] = dataclasses.field(default_factory=list)    # finished segments OUTPUT_DIRs
    output: str = ""
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(pretrain.TASKS))
    min_dnsmos: float = 0.0
    mix: MixParams = MixParams()
    split: SplitParams = SplitParams()
    sft: SftParams = SftParams()
    dpo: DpoParams = DpoParams()
    caption: CaptionParams = CaptionParams()
    decontaminate: DecontaminateParams = DecontaminateParams()
    name: str = ""                    # "" → the first input's name + "-examples"
    version: str = "1"
    keep_work: bool = False
    lock_stale_s: float = 300.0
    shards: ExampleShards = ExampleShards()
    ray: RayConfig = RayConfig()

    def params(self) -> BuildParams:
        return BuildParams(tasks=self.tasks, min_dnsmos=self.min_dnsmos, mix=self.mix, sft=self.sft, dpo=self.dpo,
                           caption=self.caption, decontaminate=self.decontaminate)

    def validate(self) -> list[str]:
        from processors.sources import SourceSpec, check_source

        problems: list[str] = []
        if not self.inputs:
            problems.append("inputs: at least one SEGMENTS_DIR is required")
        if not self.output:
            problems.append("output: an OUTPUT_DIR is required")
        for url in self.inputs:
            problems += segments_input_problems(url)
        if len(set(self.inputs)) != len(self.inputs):
            problems.append("inputs: a SEGMENTS_DIR is listed twice")
        problems += name_problems(name=self.name, version=self.version)
        if not PREFIX_RE.fullmatch(self.shards.prefix):
            problems.append(f"shards.prefix: {show(self.shards.prefix)} must be letters, digits, '-' and '_'")
        positive(problems, **{"shards.per_shard": self.shards.per_shard, "lock_stale_s": self.lock_stale_s})
        if not 0 <= self.split.eval_fraction < 1:
            problems.append(f"split.eval_fraction: {self.split.eval_fraction} must be in [0, 1)")
        if not 0 < self.split.same_voice <= 1:
            problems.append(f"split.same_voice: {self.split.same_voice} must be a cosine similarity in (0, 1]")
        for n, path in enumerate(self.decontaminate.eval_sets):
            problems += check_source(SourceSpec(path), f"decontaminate.eval_sets[{n}]")
        problems += self.params().problems() + self.ray.problems()
        if self.inputs and self.output:
            try:
                Output(self.output, self.shards.prefix, STAGES).check_apart_from(list(self.inputs))
            except OutputError as e:
                problems.append(f"output: {e}")
        return problems


# ---- the plan ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
    held: dict[str, bool]                 # segment key → held out
    selected: set[str]
    groups: dict[str, str]                # recording → voice group
    held_groups: set[str]
    rejects: list[Reject]
    hours_by_kind: dict[str, dict[str, float | None]]


def plan(rows: list[ScanRow], cfg: BuildConfig) -> Plan:
    voices: dict[str, list[np.ndarray]] = {}
    for r in rows:
        mine = voices.setdefault(r.source_sha256, [])
        if r.embedding:
            mine.append(np.asarray(r.embedding, np.float32))
    groups = voice_groups(voices, cfg.split.same_voice)
    group_hours: Counter = Counter()
    for r in rows:
        group_hours[groups[r.source_sha256]] += r.duration_s / 3600
    held_groups = held_out(dict(group_hours), cfg.split.eval_fraction)
    held = {r.key: groups[r.source_sha256] in held_groups for r in rows}
    train = [(r.key, r.kind, r.duration_s) for r in rows if not held[r.key]]
    selected = select_hours(train, cfg.mix.hours) | {k for k, h in held.items() if h}
    rejects = [Reject(r.key, "build", "over_target_hours", f"{r.kind}: mix.hours.{r.kind}={cfg.mix.hours[r.kind]} reached")
               for r in rows if r.key not in selected]
    hours: dict[str, dict[str, float | None]] = {}
    for kind in sorted({r.kind for r in rows}):
        mine = [r for r in rows if r.kind == kind and not held[r.key]]
        hours[kind] = {"target": cfg.mix.hours.get(kind), "available": round(sum(r.duration_s for r in mine) / 3600, 4),
                       "selected": round(sum(r.duration_s for r in mine if r.key in selected) / 3600, 4)}
    return Plan(held, selected, groups, held_groups, rejects, hours)


def load_eval_sets(cfg: BuildConfig) -> list[EvalSet]:
    """Each eval corpus decoded and fingerprinted once; a file that cannot be decoded is counted."""
    from processors.audio import load_standardised
    from processors.sources import SourceSpec, list_inputs

    out = []
    for path in cfg.decontaminate.eval_sets:
        listing = list_inputs(SourceSpec(path))
        items, bad = [], len(listing.rejects)
        for it in listing.items:
            try:
                items.append((it.uri, load_standardised(it.path), it.text))
            except Exception:  # noqa: BLE001 — any file that does not decode is counted, not fatal
                bad += 1
        name = posixpath.basename(path.rstrip("/")) or path
        out.append(eval_set(name, items, cfg.decontaminate.ngram, unreadable=bad))
        say(f"eval set {name}: {len(items)} items fingerprinted" + (f", {bad} unreadable" if bad else ""))
    return out


def instruction_units(cfg: BuildConfig) -> list[BuildUnit]:
    if not cfg.sft.voice_chat:
        return []
    path = cfg.sft.instructions or str(chat.INSTRUCTIONS)
    items = chat.load_instructions(path)
    held_ids = held_out({i["id"]: 1.0 for i in items}, cfg.split.eval_fraction)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    units = []
    for start in range(0, len(items), INSTRUCTIONS_PER_UNIT):
        chunk = items[start:start + INSTRUCTIONS_PER_UNIT]
        unit = hashlib.sha256(f"instructions\0{digest}\0{start}".encode()).hexdigest()[:24]
        units.append(BuildUnit(unit, instructions=tuple(json.dumps(i, sort_keys=True) for i in chunk),
                               instructions_held_out=tuple(i["id"] in held_ids for i in chunk)))
    return units


# ---- the job -------------------------------------------------------------------------------------------

def run(cfg: BuildConfig) -> dict[str, Any]:
    return run_job("build", cfg, Output(cfg.output, cfg.shards.prefix, STAGES), _work, _show)


def _work(job: Job) -> dict[str, Any]:
    cfg, out = job.cfg, job.out
    parents = [read_manifest(u) for u in cfg.inputs]
    cpus = cluster_cpus()
    progress = job.progress
    units, rejects = _input_units(cfg, parents)
    scan = _scan(units, progress, cfg.ray.max_pass_retries)
    p = plan(scan, cfg)
    rejects += p.rejects
    say(f"{len(scan)} segments from {len(p.groups)} recordings in {len(set(p.groups.values()))} voice groups; "
        f"{len(p.held_groups)} groups ({sum(p.held.values())} segments) held out")
    evals = load_eval_sets(cfg)
    work = [BuildUnit(u.unit, u.part, tuple(s for s in u.segments if s.key in p.selected),
                      tuple(p.held[s.key] for s in u.segments if s.key in p.selected))
            for u in units if any(s.key in p.selected for s in u.segments)]
    work += instruction_units(cfg)
    stage = Stage("build", BuildExamples, BuildUnit, BuiltUnit, Resources(num_cpus=1, actors=cpus),
                  BuildJob(out.join("_work", "examples"), cfg.params(), tuple(evals)))
    built = _build(out, work, stage, progress, cfg.ray.max_pass_retries)
    rows = [(b.tar, r) for b in built for r in b.examples]
    rejects += [r for b in built for r in b.rejects]
    counts: Counter = Counter()
    for b in built:
        counts.update({c.name: c.n for c in b.counts})
    shards = _pack(out, rows, cfg.shards, cfg.ray.pack_tasks_on(cpus), progress, cfg.ray.max_pass_retries)
    out.remove_stale_shards({s.name for s in shards})
    by_key = {r.key: r for _, r in rows}
    index = [ExampleIndexRow(key=k, shard=s.name, offset=o, size=z, stage=by_key[k].stage, task=by_key[k].task,
                             template=by_key[k].template, split="eval" if by_key[k].folder.endswith("/eval") else "train",
                             rejected_kind=by_key[k].rejected_kind, n_audio=by_key[k].n_audio,
                             duration_s=by_key[k].duration_s, segments=by_key[k].segments,
                             labels_used=by_key[k].labels_used)
             for s in shards for k, o, z in zip(s.keys, s.offsets, s.sizes)]
    summary = _summary(cfg, parents, scan, p, index, rejects, counts, evals, time.monotonic() - job.t0)
    name = cfg.name or f"{parents[0].name}-examples"
    manifest = job.manifest("examples", name, ",".join(f"{m.name}@{m.version}" for m in parents), summary, shards)
    job.commit([arrow.to_table(index, ExampleIndexRow)], EXAMPLE_INDEX_SCHEMA, reject_tables(rejects), manifest)
    return summary


def _input_units(cfg: BuildConfig, parents: list[Manifest]) -> tuple[list[UnitResult], list[Reject]]:
    """Every input shard; a segment id already seen in an earlier input is a duplicate."""
    seen: set[str] = set()
    units, rejects = [], []
    for url, manifest in zip(cfg.inputs, parents):
        for u in shard_units(url, manifest):
            keep = []
            for s in u.segments:
                if s.key in seen:
                    rejects.append(Reject(s.key, "build", "duplicate", f"also in an earlier input; {url} skipped"))
                else:
                    seen.add(s.key)
                    keep.append(s)
            units.append(dataclasses.replace(u, segments=tuple(keep)))
    return units, rejects


def _scan(units: list[UnitResult], progress, retries: int) -> list[ScanRow]:
    """One ``ScanRow`` per segment. A rerun after a lost worker scans only the parts not yet fully in, sent
    again whole (what had come of them is dropped)."""
    stage = Stage("scan", ScanSegments, PartRef, ScanRow, Resources(num_cpus=0.5))
    parts = [PartRef(u.unit, u.uri, u.file_sha256, u.part, u.segments, tuple(Patch() for _ in u.segments))
             for u in units if u.segments]
    rows: dict[str, ScanRow] = {}
    bar = progress("scan", sum(len(p.segments) for p in parts), "segments")

    def on_part(_: PartRef, got: list[ScanRow]) -> None:
        rows.update((r.key, r) for r in got)

    resumable_pass("scan", parts, lambda p: p.unit, lambda left: apply(dataset(left, PartRef), stage), ScanRow,
                   lambda r: r.unit, on_part, retries, say, expect=lambda p: len(p.segments),
                   on_record=lambda r: bar.update(1, audio_s=r.duration_s))
    bar.close()
    return sorted(rows.values(), key=lambda r: r.key)


def _build(out: Output, work: list[BuildUnit], stage: Stage, progress, retries: int) -> list[BuiltUnit]:
    marker = lambda unit: out.join("_work", "examples", unit + ".arrow")  # noqa: E731
    built = {u.unit: read_rows(marker(u.unit), BuiltUnit)[0] for u in work if _exists(marker(u.unit))}
    todo = [u for u in work if u.unit not in built]
    if built:
        say(f"build: {len(built)} units already built; {len(todo)} to go")
    bar = progress("build", len(todo), "units")

    def on_unit(_: BuildUnit, b: list[BuiltUnit]) -> None:
        write_rows(marker(b[0].unit), b, BuiltUnit)
        built[b[0].unit] = b[0]
        bar.update(1)

    def make(left: list[BuildUnit]):
        weights = [float(len(u.segments) or len(u.instructions)) for u in left]
        return apply(dataset(left, BuildUnit, weights), stage)

    resumable_pass("build", todo, lambda u: u.unit, make, BuiltUnit, lambda b: b.unit, on_unit, retries, say)
    bar.close()
    return [built[u.unit] for u in work]


def _pack(out: Output, rows: list[tuple[str, ExampleRow]], shards: ExampleShards, tasks: int, progress,
          retries: int) -> list[ExampleShardResult]:
    by_folder: dict[str, list[tuple[str, ExampleRow]]] = defaultdict(list)
    for tar, r in rows:
        by_folder[r.folder].append((tar, r))
    plans = []
    for folder in sorted(by_folder):
        items = sorted(by_folder[folder], key=lambda tr: tr[1].key)
        for n, start in enumerate(range(0, len(items), shards.per_shard)):
            chunk = items[start:start + shards.per_shard]
            plans.append(ExampleShardPlan(posixpath.join(folder, f"{shards.prefix}-{n:06d}.tar"),
                                          tuple(PlannedSample(r.key, tar, r.offset, r.size) for tar, r in chunk)))
    stage = Stage("pack_examples", PackExamples, ExampleShardPlan, ExampleShardResult,
                  Resources(num_cpus=1, tasks=tasks), PackExamplesJob(out.url))
    results: dict[str, ExampleShardResult] = {}
    bar = progress("pack", len(plans), "shards")

    def on_shard(_: ExampleShardPlan, r: list[ExampleShardResult]) -> None:
        results[r[0].name] = r[0]
        bar.update(1)

    resumable_pass("pack_examples", plans, lambda p: p.name, lambda left: apply(dataset(left, ExampleShardPlan), stage),
                   ExampleShardResult, lambda r: r.name, on_shard, retries, say)
    bar.close()
    return [results[p.name] for p in plans]


def _summary(cfg: BuildConfig, parents: list[Manifest], scan: list[ScanRow], p: Plan, index: list[ExampleIndexRow],
             rejects: list[Reject], counts: Counter, evals: list[EvalSet], wall: float) -> dict[str, Any]:
    by_stage_task = Counter(f"{r.stage}{'/eval' if r.split == 'eval' else ''}/{r.task}" for r in index)
    hours = Counter()
    for r in index:
        hours[f"{r.stage}{'/eval' if r.split == 'eval' else ''}/{r.task}"] += r.duration_s / 3600
    templates = pretrain.load_templates()
    used = [(f"{r.stage}/{r.task}", r.template) for r in index]
    available = {f"pretrain/{t}": len(v) for t, v in templates.items()}
    decon = {e.name: {"items": len(e.items), "unreadable": e.unreadable, "eval_audio": 0, "eval_transcript": 0}
             for e in evals}
    for name, n in counts.items():
        if name.startswith("contaminated/"):
            _, ev, how = name.split("/")
            decon[ev][how] += n
    return {
        "inputs": [f"{m.name}@{m.version}" for m in parents],
        "segments_in": len(scan),
        "segments_used": len({s for r in index for s in r.segments}),
        "recordings": len(p.groups),
        "voice_groups": len(set(p.groups.values())),
        "held_out_groups": len(p.held_groups),
        "held_out_segments": sum(p.held.values()),
        "examples": len(index),
        "examples_by_stage_task": dict(sorted(by_stage_task.items())),
        "hours_by_stage_task": {k: round(v, 4) for k, v in sorted(hours.items())},
        "mix": {"hours_by_kind": p.hours_by_kind, "task_weights": dict(cfg.mix.task_weights)},
        "template_diversity": diversity(used, available),
        "dpo_by_rejected_kind": dict(sorted(Counter(r.rejected_kind for r in index if r.stage == "dpo").items())),
        "decontaminated": decon,
        "caption_rewrites": {"kept": counts.get("caption_rewrite_kept", 0),
                             "rejected": counts.get("caption_rewrite_rejected", 0)} if cfg.caption.model else {},
        "sampled_replies": counts.get("sampled_replies", 0),
        "rejects_by_reason": dict(sorted(Counter(r.reason for r in rejects).items())),
        "wall_seconds": round(wall, 2),
    }


def _show(summary: dict[str, Any]) -> str:
    lines = []
    for k, v in summary.items():
        text = json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else str(v)
        lines.append(f"{k:<24}{text if len(text) < 400 else text[:400] + ' …'}")
    return "\n".join(lines)
