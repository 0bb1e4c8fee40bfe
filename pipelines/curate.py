"""The curate job: raw corpora → standardised, deduplicated, VAD-segmented, labelled, accounted segments in
deterministic WebDataset shards (FORMAT.md, segments layer). One Ray cluster, a list of named stages:

    ingest   (actors)  one decode pass per input: hashes, fingerprint, VAD, cut, measure, FLAC part tar
    dedup    (tasks)   exact copies by PCM hash; near copies and containment from the fingerprints, shuffled by
                       hash bucket (pipelines/stages/dedup.py); labels merged or moved
    label    (actors)  read kept segments → every configured labeler → labels   (when labelers are set)
    pack     (tasks)   copy segments into size-targeted shards with their patches; index, rejects, manifest

Every input unit writes a completion marker under ``OUTPUT/_work``; a rerun skips finished units and ends
byte-identical to an uninterrupted run. ``audiomill curate`` runs it (``python -m pipelines.cli curate`` for
``ray job submit``).
"""

from __future__ import annotations

import dataclasses
import posixpath
import time
from collections import Counter
from typing import Any

import fsspec
import numpy as np

from pipelines.config import PREFIX_RE, ConfigError, ShardConfig, name_problems, positive, show
from pipelines.job import Job, run_job
from pipelines.output import Output, OutputError
from pipelines.passes import NOT_LABELERS, Planned, SegmentPasses, reject_tables
from pipelines.runtime import IngestRayConfig, cluster_cpus, cluster_gpus, say
from pipelines.stage import Resources, Stage, apply, block_count, dataset, resumable_pass
from pipelines.stages.dedup import DedupRef, near_relations
from pipelines.stages.ingest import IngestJob, IngestStage, marker_url, read_marker
from pipelines.stages.label import LabelerError, ReadSegments, expand, labeler_stages, model_problem
from pipelines.stages.labelers import LabelParams
from pipelines.stages.pack import PackJob, PackStage
from pipelines.stages.units import unit_stages
from processors.audio import estimated_seconds
from processors.filters import FilterParams
from processors.dedup import DedupItem, NearParams, find_relations, resolve
from processors.ingest import AudioParams, IngestParams
from processors.merge import MergeCounts, MergeResult, plan_merges
from processors.segment import SegmentParams
from processors.sources import FORMATS, ListingParams, SourceError, SourceSpec, check_source, list_inputs
from processors.vad import VadParams
from schemas.input import InputItem
from schemas.reject import Reject
from schemas.segment import SegmentAudio
from schemas.shard import Patch, ShardPlan, ShardResult
from schemas.unit import PartRef, UnitRef, UnitResult



@dataclasses.dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    min_matches: int = 12
    min_fraction: float = 0.2
    min_coverage: float = 0.9
    verify: bool = True             # confirm near candidates on the audio of the overlapping spans
    max_trim_s: float = 1.0         # a copy may lack this much of the other's audio …
    min_duplicate_overlap: float = 0.9   # … or this share of it; a shorter overlap is containment
    max_hash_items: int = 64        # fingerprint hashes in more inputs than this are common material
    containment: str = "keep"       # keep: a clip inside a longer recording stays (extra.contained_in); drop
    target_level_dbfs: float = -20.0     # copies closer to this active level rank higher

    def near_params(self) -> NearParams | None:
        if not self.near:
            return None
        return NearParams(self.min_matches, self.min_fraction, min_coverage=self.min_coverage,
                          max_trim_s=self.max_trim_s, min_duplicate_overlap=self.min_duplicate_overlap,
                          max_hash_items=self.max_hash_items)


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
    lock_stale_s: float = 300.0  # a run's lock not refreshed for this long belongs to a dead run
    labelers: list[str] = dataclasses.field(default_factory=lambda: ["auto"])   # names or module:Class; [none]: off
    label: LabelParams = LabelParams()
    filters: FilterParams = FilterParams()
    listing: ListingParams = ListingParams()
    audio: AudioParams = AudioParams()
    dedup: DedupConfig = DedupConfig()
    vad: VadParams = VadParams()
    segment: SegmentParams = SegmentParams()
    shards: ShardConfig = ShardConfig()
    ray: IngestRayConfig = IngestRayConfig()
    errors: ErrorConfig = ErrorConfig()

    def all_sources(self) -> list[SourceSpec]:
        return list(self.sources) + [parse_input(s, self.license, self.split) for s in self.inputs]

    def validate(self) -> list[str]:
        problems: list[str] = []
        if not self.output:
            problems.append("output: an OUTPUT_DIR is required")
        if not self.inputs and not self.sources:
            problems.append("inputs: at least one INPUT (or a sources: entry) is required")
        for i, spec in enumerate(self.sources):
            problems += check_source(spec, f"sources[{i}] ({spec.path!r})")
            problems += name_problems(**{f"sources[{i}].corpus": spec.corpus, f"sources[{i}].split": spec.split})
        for text in self.inputs:
            problems += check_source(parse_input(text, self.license, self.split), f"input {text!r}")
        problems += name_problems(name=self.name, version=self.version, parent_version=self.parent_version, split=self.split)
        if not PREFIX_RE.fullmatch(self.shards.prefix):
            problems.append(f"shards.prefix: {show(self.shards.prefix)} must be letters, digits, '-' and '_' "
                            "(it names files inside OUTPUT_DIR)")
        positive(problems, **{"audio.chunk_s": self.audio.chunk_s, "audio.block_s": self.audio.block_s,
                              "vad.max_segment_s": self.vad.max_segment_s, "shards.target_mb": self.shards.target_mb,
                              "shards.max_samples": self.shards.max_samples, "lock_stale_s": self.lock_stale_s,
                              "audio.stall_timeout_s": self.audio.stall_timeout_s,
                              "listing.max_text_chars": self.listing.max_text_chars,
                              "listing.max_sidecar_bytes": self.listing.max_sidecar_bytes,
                              "audio.min_sample_rate": self.audio.min_sample_rate})
        if self.shards.target_mb > 1 << 20:
            problems.append(f"shards.target_mb: {self.shards.target_mb} is more than a TiB per shard")
        if self.audio.max_sample_rate < self.audio.min_sample_rate:
            problems.append("audio.max_sample_rate: must be ≥ audio.min_sample_rate")
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
        if self.dedup.containment not in ("keep", "drop"):
            problems.append(f"dedup.containment: {show(self.dedup.containment)} is not keep or drop")
        if not 0 < self.dedup.min_duplicate_overlap <= 1 or not 0 <= self.dedup.min_coverage <= 1:
            problems.append("dedup.min_duplicate_overlap and dedup.min_coverage: must be in (0, 1]")
        problems += self.ray.problems()
        problems += self.filters.problems()
        try:
            for name in expand(self.labelers, self.label):
                problem = model_problem(name, self.label)
                if problem:
                    problems.append(problem)
        except LabelerError as e:
            problems.append(str(e))
        if self.output:
            try:
                Output(self.output, self.shards.prefix).check_apart_from([s.path for s in self.all_sources()])
            except OutputError as e:
                problems.append(f"output: {e}")
        return problems


def parse_input(text: str, license: str, split: str) -> SourceSpec:
    """``"esc50:/data/meta/esc50.csv"`` → SourceSpec(format="esc50", …); a plain path or URL → auto."""
    fmt, sep, rest = text.partition(":")
    if sep and fmt in FORMATS and not rest.startswith("//"):
        return SourceSpec(path=rest, format=fmt, license=license, split=split)
    return SourceSpec(path=text, license=license, split=split)


class ErrorBudgetExceeded(RuntimeError):
    """Too many inputs were rejected: likely a systematic problem, not bad media."""


# ---- the stages ------------------------------------------------------------------------------------

def stages(cfg: CurateConfig, work: str, cpus: int, gpus: float = 0.0) -> dict[str, Stage]:
    """The job's stages by name, in order; ``dedup`` (its own tasks, pipelines/stages/dedup.py) runs between
    ``ingest`` and the rest."""
    r = cfg.ray
    params = IngestParams(audio=cfg.audio, segment=cfg.segment, vad=cfg.vad, fingerprint=cfg.dedup.near)
    workers = r.ingest_workers or max(1, int(cpus / r.ingest_num_cpus))
    out = {"ingest": Stage("ingest", IngestStage, InputItem, UnitResult,
                           Resources(num_cpus=r.ingest_num_cpus, tasks=workers), IngestJob(params, work))}
    labelers = labeler_stages(cfg.labelers, cfg.label, cpus, gpus)
    out.update(unit_stages(work, labelers=bool(labelers)))
    if labelers:
        out["read"] = Stage("read", ReadSegments, PartRef, SegmentAudio, Resources(num_cpus=0.25))
        for stage in labelers:
            out[stage.name] = stage
    out["pack"] = Stage("pack", PackStage, ShardPlan, ShardResult,
                        Resources(num_cpus=1, tasks=r.pack_tasks_on(cpus)), PackJob(cfg.output.rstrip("/"), work))
    return out


# ---- the job ---------------------------------------------------------------------------------------

def run(cfg: CurateConfig) -> dict[str, Any]:
    """Run the whole job; return the summary (also printed). Safe to rerun after a crash."""
    return run_job("curate", cfg, Output(cfg.output, cfg.shards.prefix), lambda job, listing: _Job(job, listing).run(),
                   format_summary, prepare=lambda: list_all(cfg))


@dataclasses.dataclass
class _Listed:
    items: list[InputItem]
    rejects: list[Reject]
    ignored: Counter


def list_all(cfg: CurateConfig) -> _Listed:
    """Every source listed; a source that cannot be listed at all is a config error (all reported)."""
    items: dict[bytes, InputItem] = {}
    rejects: list[Reject] = []
    ignored: Counter = Counter()
    problems = []
    for spec in cfg.all_sources():
        try:
            found = list_inputs(spec, cfg.listing)
        except SourceError as e:
            problems.append(str(e))
            continue
        rejects += found.rejects
        ignored.update(found.ignored)
        for it in found.items:
            if it.location in items:
                rejects.append(Reject(it.uri, "list", "listed_twice", f"also in corpus {items[it.location].corpus}"))
            else:
                items[it.location] = it
    if problems:
        raise ConfigError(problems)
    return _Listed(sorted(items.values(), key=lambda it: (it.uri, it.location)), rejects, ignored)


class _Job:
    def __init__(self, job: Job, listing: _Listed):
        self.job, self.cfg, self.out, self.listing, self.t0 = job, job.cfg, job.out, listing, job.t0
        self.cpus = cluster_cpus()
        self.stages = stages(self.cfg, self.out.work, self.cpus, cluster_gpus())
        self.seen = len(listing.items) + len(listing.rejects)
        self.times: dict[str, float] = {}
        self.segment_unit: dict[str, str] = {}      # segment key → unit, of the units dedup related
        self.passes = SegmentPasses(self.out, self.stages, self.cfg.ray, job.progress)

    def run(self) -> dict[str, Any]:
        t_ray = time.monotonic()
        say(f"{len(self.listing.items)} inputs listed, {len(self.listing.rejects)} rejected while listing; "
            f"stages: {' → '.join(['ingest', 'dedup', *[n for n in self.stages if n not in NOT_LABELERS], 'plan', 'pack'])}; "
            f"Ray ready in {t_ray - self.t0:.1f} s")
        units = self._timed("ingest", self.ingest)
        rejects = list(self.listing.rejects) + [u.reject for u in units if not u.ok]
        self._check_budget(len(rejects), self.seen)
        kept = [u for u in units if u.ok]
        merge = self._timed("dedup", lambda: self.dedup(kept))
        rejects += merge.rejects
        self._check_budget(len(rejects), self.seen)
        refs = self.refs([u for u in kept if u.unit not in merge.dropped], merge.patches)
        if self.passes.labelers:
            self._timed("label", lambda: self.passes.run_labelers(refs))
        planned = self._timed("plan", lambda: self.passes.plan(refs, self.cfg.filters))
        s = self.cfg.shards
        shards = self._timed("pack", lambda: self.passes.pack(planned.sized, int(s.target_mb * (1 << 20)),
                                                               s.max_samples, s.prefix))
        summary = self._summary(units, rejects, planned, shards, merge.counts, t_ray)
        self._timed("commit", lambda: self.commit(shards, rejects, planned, summary))
        summary["stage_seconds"] = {k: round(v, 2) for k, v in self.times.items()}
        return summary

    def _timed(self, name: str, fn):
        t = time.monotonic()
        result = fn()
        self.times[name] = time.monotonic() - t
        return result

    def _check_budget(self, rejected: int, seen: int) -> None:
        e = self.cfg.errors
        if seen >= e.min_inputs and rejected > e.max_reject_fraction * seen:
            raise ErrorBudgetExceeded(f"{rejected} of {seen} inputs rejected (> errors.max_reject_fraction "
                                      f"{e.max_reject_fraction}); the reasons are in {self.out.work}/units")

    # ---- ingest --------------------------------------------------------------------------------------

    def ingest(self) -> list[UnitResult]:
        items = self.listing.items
        fs, _ = fsspec.core.url_to_fs(self.out.work)
        have = {posixpath.basename(p)[: -len(".arrow")]
                for p in fs.glob(fsspec.core.url_to_fs(marker_url(self.out.work, "*"))[1])}
        results: dict[str, UnitResult] = {}
        for it in items:
            if it.unit in have:
                results[it.unit] = read_marker(marker_url(self.out.work, it.unit)).lean()     # the marker holds the whole record
        # The biggest inputs first (by an estimate of their duration from headers), so none is left at the end.
        seconds = {it.unit: estimated_seconds(it.path, it.size) for it in items if it.unit not in results}
        todo = sorted((it for it in items if it.unit not in results), key=lambda it: (-seconds[it.unit], it.uri))
        if results:
            say(f"ingest: {len(results)} inputs already done, {len(todo)} to go")
        progress = self.job.progress("ingest", len(todo), "inputs", float(sum(seconds.values())))
        listed_rejects = len(self.listing.rejects)
        done_rejects = sum(not r.ok for r in results.values())

        def on_result(_: InputItem, r: list[UnitResult]) -> None:
            nonlocal done_rejects
            results[r[0].unit] = u = r[0]
            done_rejects += not u.ok
            progress.update(1, seconds.get(u.unit, 0.0), u.duration_s)
            self._check_budget(listed_rejects + done_rejects, listed_rejects + len(results))

        def make(left: list[InputItem]):
            stage = self.stages["ingest"]
            workers = stage.resources.tasks
            blocks = block_count(len(left), workers)      # of about equal audio
            stage = dataclasses.replace(stage, resources=dataclasses.replace(stage.resources, tasks=min(workers, blocks)))
            return apply(dataset(left, InputItem, [max(0.1, seconds[it.unit]) for it in left], blocks=blocks), stage)

        resumable_pass("ingest", todo, lambda it: it.unit, make, UnitResult, lambda u: u.unit, on_result,
                       self.cfg.ray.max_pass_retries, say)
        progress.close()
        return [results[it.unit] for it in items]

    def refs(self, kept: list[UnitResult], patches: dict[str, Patch]) -> list[UnitRef]:
        """What the passes after dedup get of each kept unit: where its marker is, and dedup's patches to
        its segments (those of the units dedup related, whose segments ``dedup`` read)."""
        by_unit: dict[str, tuple[list[str], list[Patch]]] = {}
        for key, patch in patches.items():
            keys, values = by_unit.setdefault(self.segment_unit[key], ([], []))
            keys.append(key)
            values.append(patch)
        return [u.ref(marker_url(self.out.work, u.unit), *map(tuple, by_unit.get(u.unit, ([], [])))) for u in kept]

    # ---- dedup ---------------------------------------------------------------------------------------

    def dedup(self, kept: list[UnitResult]) -> MergeResult:
        d = self.cfg.dedup
        if not (d.exact or d.near):
            return plan_merges(kept, resolve([], []), False)
        path = {it.unit: it.path for it in self.listing.items}
        empty = np.zeros((0, 2), np.int32)
        items = [DedupItem(path[u.unit], u.pcm_sha256 if d.exact else u.unit, empty, u.duration_s,
                           copy_rank(u, d.target_level_dbfs)) for u in kept]
        relations = find_relations(items, near=None)          # exact copies: the first of each is representative
        near = d.near_params()
        if near is not None:
            copies = {r.b for r in relations}
            refs = [DedupRef(i, marker_url(self.out.work, u.unit), path[u.unit], u.duration_s, u.hashes)
                    for i, u in enumerate(kept) if i not in copies]
            relations += near_relations(refs, near, d.verify, self.cfg.ray, say)
        merge = plan_merges(self._related_whole(kept, relations), resolve(items, relations), d.containment == "drop")
        c = merge.counts
        say(f"dedup: {sum(r.reason == 'duplicate' for r in merge.rejects)} duplicates, "
            f"{sum(r.how == 'contained' for r in relations)} containments; labels merged {c.merged}, moved {c.moved}, "
            f"conflicting {c.conflicts}, not placed {c.not_placed}")
        return merge

    def _related_whole(self, kept: list[UnitResult], relations) -> list[UnitResult]:
        """``kept`` with the segment records of every unit in a relation read back from its marker: what
        dedup merges and moves labels between."""
        whole = list(kept)
        for i in sorted({r.a for r in relations} | {r.b for r in relations}):
            whole[i] = dataclasses.replace(read_marker(marker_url(self.out.work, kept[i].unit)), fingerprint=b"")
            self.segment_unit.update((seg.key, kept[i].unit) for seg in whole[i].segments)
        return whole

    # ---- labelers, filters, pack, commit ---------------------------------------------------------------

    def commit(self, shards: list[ShardResult], rejects: list[Reject], planned: Planned, summary: dict[str, Any]) -> None:
        """``rejects``: those of whole inputs (listing, ingest, dedup); the filters' are in ``planned``'s parts."""
        c = self.cfg
        manifest = self.job.manifest("segments", c.name, c.parent_version, summary, shards)
        self.passes.commit(self.job, shards, reject_tables(rejects, planned.reject_rows()), manifest)

    def _summary(self, units: list[UnitResult], rejects: list[Reject], planned: Planned, shards: list[ShardResult],
                 counts: MergeCounts, t_ray: float) -> dict[str, Any]:
        index = self.passes.totals(shards)
        wall = time.monotonic() - self.t0
        decoded = sum(u.duration_s for u in units if u.ok)
        warnings = Counter(w.split(":", 1)[0] for u in units for w in u.warnings)
        hours = lambda seconds: {k: round(v / 3600, 4) for k, v in sorted(seconds.items())}  # noqa: E731
        return {
            "inputs_seen": self.seen,
            "accepted": index.inputs,
            "rejected": len(rejects) + planned.rejected["filtered"],      # inputs
            "segments_filtered": planned.dropped,
            "rejected_by_reason": dict(sorted((Counter(r.reason for r in rejects) + planned.rejected).items())),
            "hours_by_language": hours(index.seconds_by_language),
            "top_events": dict(index.first_sound_events.most_common(10)),
            "speaker_counts": dict(sorted(index.speakers.items())),
            "segments": index.segments,
            "segments_by_kind": dict(sorted(index.kinds.items())),
            "hours_by_kind": hours(index.seconds_by_kind),
            "labels": counts.as_dict(),
            "warnings": dict(sorted(warnings.items())),
            "sidecars_ignored": dict(sorted(self.listing.ignored.items())),
            "audio_seconds_decoded": round(decoded, 3),
            "wall_seconds": round(wall, 2),
            "audio_seconds_per_wall_second": round(decoded / wall, 2) if wall > 0 else 0.0,
            "job_seconds": round(time.monotonic() - t_ray, 2),
        }


def copy_rank(u: UnitResult, target_level_dbfs: float) -> tuple:
    """Which copy of a duplicate cluster is kept, lowest first: the one carrying more labels, then a
    lossless one, then the higher native sample rate, then the wider bandwidth, then the level closer to
    ``target_level_dbfs``, then the longer, then by uri."""
    return (-u.label_count, not u.lossless, -u.native_sample_rate, -round(u.bandwidth_hz, -2),
            round(abs(u.level_dbfs - target_level_dbfs), 1), -u.duration_s, u.uri)


def format_summary(s: dict[str, Any]) -> str:
    lines = ["", "audiomill curate summary", "-" * 48]
    row = lambda k, v: lines.append(f"{k:<34}{v:>14}")  # noqa: E731
    row("inputs seen", s["inputs_seen"])
    row("accepted", s["accepted"])
    row("rejected", s["rejected"])
    for reason, n in s["rejected_by_reason"].items():
        row(f"  {reason}", n)
    row("segments", s["segments"])
    for kind, h in s["hours_by_kind"].items():
        row(f"  {kind} (segments / hours)", f"{s['segments_by_kind'][kind]} / {h:.4f}")
    if s.get("segments_filtered"):
        row("segments filtered", s["segments_filtered"])
    if s.get("hours_by_language"):
        lines.append("hours by language")
        for lang, h in sorted(s["hours_by_language"].items(), key=lambda kv: -kv[1]):
            row(f"  {lang}", f"{h:.4f}")
    if s.get("speaker_counts"):
        row("segments by speaker count", ", ".join(f"{n}: {c}" for n, c in s["speaker_counts"].items()))
    if s.get("top_events"):
        lines.append("top events (sound and music segments)")
        for event, n in sorted(s["top_events"].items(), key=lambda kv: -kv[1])[:5]:
            row(f"  {event}", n)
    labels = s.get("labels", {})
    if any(labels.values()):
        row("labels merged / moved", f"{labels.get('merged', 0)} / {labels.get('moved', 0)}")
        row("labels conflicting / not placed", f"{labels.get('conflicts', 0)} / {labels.get('not_placed', 0)}")
    for kind, n in s.get("warnings", {}).items():
        row(f"warning: {kind}", n)
    for reason, n in s.get("sidecars_ignored", {}).items():
        lines.append(f"ignored {reason}: {n}")
    row("audio seconds decoded", f"{s['audio_seconds_decoded']:.1f}")
    if "wall_seconds" in s:
        row("wall seconds", f"{s['wall_seconds']:.1f}")
        row("audio-s per wall-s", f"{s['audio_seconds_per_wall_second']:.1f}")
        row("  after Ray start-up", f"{s['audio_seconds_decoded'] / max(s['job_seconds'], 1e-9):.1f}")
    if "stage_seconds" in s:
        row("stage seconds", " ".join(f"{k}={v:.1f}" for k, v in s["stage_seconds"].items()))
    return "\n".join(lines)
