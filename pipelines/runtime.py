"""Where jobs run: the Ray cluster (embedded or an address), quiet logs, and the driver's messages."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """Config section ``ray`` of every job that writes shards (label, build); curate adds its ingest keys."""

    address: str = ""            # "" → RAY_ADDRESS if set, else an embedded local Ray
    num_cpus: int = 0            # embedded Ray only; 0 → all cores
    object_store_mb: int = 1024  # embedded Ray only
    pack_tasks: int = 0          # shards packed at once; 0 → one per CPU of the cluster
    max_pass_retries: int = 2    # a pass that loses a worker is rerun (finished units are kept)
    max_block_mb: int = 16       # the largest block a task hands on, so what a worker holds of a pass's
                                 # audio does not grow with how much its input block carries
    progress: bool = True
    progress_every_s: float = 10.0

    def problems(self) -> list[str]:
        out = []
        for name in ("num_cpus", "pack_tasks", "max_pass_retries"):
            if getattr(self, name) < 0:
                out.append(f"ray.{name}: must be ≥ 0, got {getattr(self, name)}")
        if self.max_block_mb <= 0:
            out.append(f"ray.max_block_mb: must be > 0, got {self.max_block_mb}")
        if self.object_store_mb < 80:
            out.append(f"ray.object_store_mb: Ray needs at least 80 MB, got {self.object_store_mb}")
        if not self.progress_every_s > 0:
            out.append(f"ray.progress_every_s: must be > 0, got {self.progress_every_s}")
        return out

    def pack_tasks_on(self, cpus: int) -> int:
        return self.pack_tasks or cpus


@dataclasses.dataclass(frozen=True)
class IngestRayConfig(RayConfig):
    """Config section ``ray`` of the jobs that ingest raw audio (curate, run)."""

    ingest_workers: int = 0      # ingest tasks at once; 0 → one per CPU of the cluster
    ingest_num_cpus: float = 1.0
    dedup_one_task_hashes: int = 4_000_000   # up to this many fingerprint hashes, one task finds dedup candidates
    dedup_bucket_hashes: int = 1_000_000     # beyond, hashes per shuffle bucket (a reducer's input)
    dedup_verify_batch: int = 64             # dedup candidates per verification task

    def problems(self) -> list[str]:
        out = super().problems()
        if self.ingest_workers < 0:
            out.append(f"ray.ingest_workers: must be ≥ 0, got {self.ingest_workers}")
        if self.dedup_one_task_hashes < 0:
            out.append(f"ray.dedup_one_task_hashes: must be ≥ 0, got {self.dedup_one_task_hashes}")
        for name in ("dedup_bucket_hashes", "dedup_verify_batch"):
            if getattr(self, name) <= 0:
                out.append(f"ray.{name}: must be > 0, got {getattr(self, name)}")
        if not 0 < self.ingest_num_cpus <= 64:
            out.append(f"ray.ingest_num_cpus: must be in (0, 64], got {self.ingest_num_cpus}")
        return out

    def common(self) -> dict:
        """The keys every job's ``ray`` section has (what the run hands to build)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RayConfig)}


def say(msg: str) -> None:
    print(f"[audiomill] {msg}", flush=True)


def init_ray(cfg: RayConfig) -> None:
    """Attach to ``cfg.address`` (or ``RAY_ADDRESS``), else start an embedded local Ray; quiet its logs.
    Ray Data's own progress bars stay off: jobs report progress themselves (``pipelines/progress.py``)."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = cfg.address or os.environ.get("RAY_ADDRESS", "")
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address="local", num_cpus=cfg.num_cpus or os.cpu_count(), include_dashboard=False,
                     object_store_memory=cfg.object_store_mb << 20, log_to_driver=False,
                     logging_level=logging.WARNING)
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.target_max_block_size = cfg.max_block_mb << 20
    ctx.print_on_execution_start = False
    # Ray Data warns once per process that its bars are off; they are off on purpose.
    log_once("ray_data_progress_manager_disabled")
    # A failed task reaches the job as an exception, which says what failed; Ray Data would also log it
    # (and its stack) on the console before the job's own one-line message.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def interactive() -> bool:
    return sys.stderr.isatty()
