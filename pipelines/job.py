"""What every job that writes a layer does around its own work, once: its output, the hash of the settings
that make that output, finished-or-free, the lock, the claim on ``_work``, Ray, and the commit (index,
rejects, card, manifest last).

    def run(cfg):
        return run_job("label", cfg, Output(cfg.output, cfg.shards.prefix), work, show)

``work(job)`` does the job's passes and returns its summary; ``run_job`` prints it with ``show`` and
returns it. A finished output of the same settings returns its summary at once; one of other settings,
or files audiomill did not write, stop the job before any work.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from pipelines.config import config_hash, to_dict
from pipelines.output import Output
from pipelines.progress import Progress
from pipelines.runtime import init_ray, say
from schemas.manifest import Manifest, ShardEntry

NOT_OUTPUT = ("output", "ray", "keep_work", "lock_stale_s")     # settings that change where or how, not what
TIMING_KEYS = ("wall_seconds", "audio_seconds_per_wall_second", "job_seconds", "stage_seconds")


def output_hash(cfg: Any) -> str:
    """The hash of the settings that make the output (its manifest's ``config_hash``)."""
    return config_hash(cfg, exclude=NOT_OUTPUT)


def job_config(cfg: Any) -> dict[str, Any]:
    """The configuration as it made the output (without where it ran or wrote), for config.json: the same
    for the same inputs and settings, like everything else in the output."""
    return {k: v for k, v in to_dict(cfg).items() if k not in NOT_OUTPUT}


@dataclasses.dataclass
class Job:
    cfg: Any
    out: Output
    digest: str
    t0: float
    resumed: bool = False

    def progress(self, phase: str, total: int, unit: str, weight: float = 0.0) -> Progress:
        r = self.cfg.ray
        return Progress(phase, total, unit, weight, r.progress_every_s, enabled=r.progress)

    def manifest(self, layer: str, name: str, parent_version: str | None, summary: dict[str, Any],
                 shards) -> Manifest:
        return Manifest(layer=layer, name=name, version=self.cfg.version, parent_version=parent_version or None,
                        config_hash=self.digest, summary={k: v for k, v in summary.items() if k not in TIMING_KEYS},
                        shards=tuple(ShardEntry(s.name, s.bytes, s.samples, s.sha256) for s in shards))

    def commit(self, index, index_schema, rejects, manifest: Manifest) -> None:
        """``index`` and ``rejects``: their rows as Arrow tables, in order (``passes.reject_tables``)."""
        from pipelines.passes import commit_layer

        commit_layer(self.out, index, index_schema, rejects, manifest, self.cfg.keep_work, job_config(self.cfg))


def run_job(verb: str, cfg: Any, out: Output, work: Callable[..., dict[str, Any]],
            show: Callable[[dict[str, Any]], str], prepare: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run ``work(job)`` as the job ``verb`` writing ``out``; safe to rerun after a crash. With ``prepare``,
    what it returns is read before the lock and Ray (an input's listing, which may still fail as a config
    error) and handed on: ``work(job, prepared)``."""
    t0 = time.monotonic()
    digest = output_hash(cfg)
    finished = out.finished_or_free(digest, verb)
    if finished is not None:
        return finished
    ready = prepare() if prepare is not None else None
    with out.lock(cfg.lock_stale_s):
        job = Job(cfg, out, digest, t0, resumed=out.claim(digest))
        if job.resumed:
            say("resuming: finished work is skipped")
        init_ray(cfg.ray)
        summary = work(job) if prepare is None else work(job, ready)
    print(show(summary), flush=True)
    return summary
