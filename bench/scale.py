"""How the curate job's memory and speed change with the corpus, and whether two nodes give the same output.

    .venv/bin/python bench/scale.py [--hours 0.5] [--scale 10] [--skip-cluster]

On one generated corpus of distinct recordings (TTS speech with pauses and music, as ``bench/curate.py``
makes it) and on one ``--scale`` times its size, ``audiomill curate`` runs with a cheap labeler (each
segment's zero-crossing rate, read from its FLAC) on 2 CPUs of embedded Ray, and the bench reports:

- the driver process's own peak resident memory (``VmHWM``, read by the driver itself as it exits), the
  peaks of its anonymous pages and of the object-store pages it maps, and its VmHWM after each stage;
- the largest Ray worker's peak (``VmHWM`` of every worker process, sampled while the job runs);
- wall time, audio-s per core-s after Ray's start-up, and the job's per-stage seconds;
- then the 1× corpus again on a local 2-node Ray cluster (``ray.cluster_utils.Cluster``, one CPU a node)
  against one node, and whether the two outputs are byte-identical.

Then dedup alone (``--dedup-hours``, default 10,100,1000) over synthetic fingerprints on a local 2-node
cluster, through the job's own shuffle (``pipelines/stages/dedup.py``, forced for every size): 10-minute
items of 59 hashes a second (the density measured on real fingerprints), drawn like the fingerprinter's
hashes (anchor bin, bin difference and time difference, subsampled by the same rule), one in 200
followed by a near copy of itself (shifted, 10 % of its hashes lost). It reports the largest worker's
peak and what it ran (against the hours, at one ``ray.dedup_bucket_hashes``), the wall time, and how many
planted copies were found.

The ratios print beside the goals they are held to.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABELER = "tests.pipelines.toy_labelers:ZeroCrossing"


def status_mb(*keys: str, pid: int | str = "self") -> list[float]:
    """Fields of a process's ``/proc/<pid>/status`` in MB (``VmHWM``, ``RssAnon``, …), 0 for one missing
    or a process gone."""
    found: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in keys:
                    found[name] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return [found.get(k, 0.0) for k in keys]


def vm_hwm_mb(pid: int | str = "self") -> float:
    """A process's peak resident set size so far, in MB (0 when it is gone)."""
    return status_mb("VmHWM", pid=pid)[0]


def child(argv: list[str]) -> None:
    """Run the CLI in this process, printing this process's own peak memory after each of the job's stages
    and on its last lines: VmHWM, and the peaks of its anonymous and shared (object store) pages, sampled
    every 50 ms."""
    import threading

    from pipelines import curate
    from pipelines.cli import main

    peaks = [0.0, 0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peaks[:] = [max(p, now) for p, now in zip(peaks, status_mb("RssAnon", "RssShmem"))]

    threading.Thread(target=sample, daemon=True).start()

    timed = curate._Job._timed

    def timed_with_peak(job, name, fn):
        try:
            return timed(job, name, fn)
        finally:
            print(f"DRIVER_STAGE_VMHWM_MB {name} {vm_hwm_mb():.1f}", flush=True)

    curate._Job._timed = timed_with_peak
    try:
        rc = main(argv)
    finally:
        stop.set()
        print(f"DRIVER_ANON_SHMEM_PEAK_MB {peaks[0]:.1f} {peaks[1]:.1f}", flush=True)
        print(f"DRIVER_VMHWM_MB {vm_hwm_mb():.1f}", flush=True)
    sys.exit(rc)


def is_worker(cmdline: list[str]) -> bool:
    text = " ".join(cmdline)
    return "default_worker.py" in text or text.startswith("ray::")


class WorkerPeaks:
    """While open, samples every 0.25 s the peak resident memory (VmHWM) of each Ray worker process below
    this one; ``largest`` is the largest seen."""

    def __enter__(self) -> "WorkerPeaks":
        import threading

        self.peaks: dict[int, float] = {}
        self.titles: dict[int, str] = {}       # what the process ran when its peak last rose
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def largest(self) -> float:
        return max(self.peaks.values(), default=0.0)

    @property
    def largest_title(self) -> str:
        """What the largest worker last ran (Ray titles a worker with its task or actor) when its peak rose."""
        return self.titles[max(self.peaks, key=self.peaks.get)] if self.peaks else ""

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        seen: dict[int, str] = {}           # each worker's last task or actor (a finished one shows as IDLE)
        while not self.stop.is_set():
            for p in me.children(recursive=True):
                try:
                    title = " ".join(p.cmdline()).strip()
                    if is_worker(title.split()):
                        if title != "ray::IDLE":
                            seen[p.pid] = title[:80]
                        peak = vm_hwm_mb(p.pid)
                        if peak > self.peaks.get(p.pid, 0.0):
                            self.peaks[p.pid], self.titles[p.pid] = peak, seen.get(p.pid, title)
                except psutil.Error:
                    pass
            time.sleep(0.25)


def run_job(corpus: Path, out: Path, cpus: int, address: str = "") -> dict:
    """``audiomill curate`` in a fresh driver process; every worker process below this one is sampled."""
    import psutil

    from bench.curate import job_output

    cmd = [sys.executable, __file__, "--child", "curate", str(corpus), str(out), "ray.progress=false",
           "keep_work=false", f"labelers=[{LABELER}]"]
    cmd += [f"--address={address}"] if address else [f"ray.num_cpus={cpus}"]
    t0 = time.monotonic()
    with WorkerPeaks() as workers:
        proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        proc.wait()
    wall, log, summary, stages = job_output(proc, out, t0)
    line = lambda key: next(ln for ln in log.splitlines() if key in ln)  # noqa: E731
    anon, shmem = map(float, line("DRIVER_ANON_SHMEM_PEAK_MB").split()[1:])
    return {"driver_mb": float(line("DRIVER_VMHWM_MB").split()[1]), "anon_mb": anon, "shmem_mb": shmem,
            "worker_mb": workers.largest,
            "worker": workers.largest_title, "wall": wall, "after_startup": float(line("after Ray start-up").split()[-1]) / cpus,
            "hours": summary["audio_seconds_decoded"] / 3600, "segments": summary["segments"],
            "inputs": summary["inputs_seen"], "stages": stages,
            "driver_by_stage": " ".join(f"{ln.split()[1]}={float(ln.split()[2]):.0f}" for ln in log.splitlines()
                                        if ln.startswith("DRIVER_STAGE_VMHWM_MB"))}


def same_tree(a: Path, b: Path) -> bool:
    """Every file under ``a`` and ``b`` alike, byte for byte."""
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def on_two_nodes(corpus: Path, out: Path) -> dict:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 512 << 20})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=512 << 20)
        cluster.wait_for_nodes()
        return run_job(corpus, out, 2, address=cluster.address)
    finally:
        cluster.shutdown()


ITEM_S = 600.0            # synthetic dedup items: 10 minutes each …
HASHES_PER_S = 59         # … at the rate measured on real fingerprints (docs/scale.md)
COPY_EVERY = 200          # every 200th item is followed by a near copy of itself


def synthetic_fingerprint(rng, n: int, frames: int):
    """``n`` (hash, frame) rows drawn like ``Fingerprinter``'s: anchor bin 0–256, bin difference ±63 and
    time difference 1–63 frames, kept by ``keep_hash``'s rule, at sorted random anchor frames."""
    import numpy as np

    from processors.fingerprint import MAX_DF, keep_hash

    out = np.zeros(0, np.int64)
    while len(out) < n:
        h = (rng.integers(0, 257, 4 * n) << 14) | ((rng.integers(-MAX_DF, MAX_DF + 1, 4 * n) + MAX_DF) << 6) \
            | rng.integers(1, 64, 4 * n)
        out = np.r_[out, h[keep_hash(h)]]
    return np.stack([out[:n], np.sort(rng.integers(0, frames, n))], axis=1)


def write_markers(folder: Path, hours: float, seed: int = 0) -> tuple[list, int]:
    """Synthetic unit markers (only the fingerprint column, which is all dedup reads) → the job's
    ``DedupRef``s and the number of planted near copies."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc

    from pipelines.stages.dedup import DedupRef

    rng = np.random.default_rng(seed)
    n, frames = int(ITEM_S * HASHES_PER_S), int(ITEM_S / 0.016)
    items = int(round(hours * 3600 / ITEM_S))
    folder.mkdir(parents=True)
    refs, planted, fp = [], 0, None
    for i in range(items):
        if i % COPY_EVERY == 1 and fp is not None:       # a near copy of the previous item
            fp = fp[rng.random(len(fp)) > 0.1] + np.array([0, 37])
            planted += 1
        else:
            fp = synthetic_fingerprint(rng, n, frames)
        path = folder / f"{i:07d}.arrow"
        table = pa.table({"fingerprint": [np.ascontiguousarray(fp, "<i8").tobytes()]})
        with pa.ipc.new_file(str(path), table.schema) as w:
            w.write_table(table)
        refs.append(DedupRef(i, str(path), "", ITEM_S, len(fp)))
    return refs, planted


def dedup_alone(hours: float, tmp: Path, bucket_hashes: int) -> dict:
    """The job's near-copy search (``near_relations``, the shuffle forced, candidates checked on their
    fingerprints: there is no audio) over ``hours`` of synthetic fingerprints on 2 local nodes."""
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.runtime import IngestRayConfig
    from pipelines.stages.dedup import near_relations
    from processors.dedup import NearParams

    refs, planted = write_markers(tmp / f"markers-{hours:g}h", hours)
    said: list[str] = []
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 1 << 30})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=1 << 30)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        cfg = IngestRayConfig(dedup_one_task_hashes=0, dedup_bucket_hashes=bucket_hashes)
        with WorkerPeaks() as workers:
            t0 = time.monotonic()
            relations = near_relations(refs, NearParams(), False, cfg, said.append)
            wall = time.monotonic() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    copies = {(r.item, r.item + 1) for r in refs if r.item % COPY_EVERY == 0 and r.item + 1 < len(refs)}
    found = {(r.a, r.b) for r in relations}
    return {"hours": hours, "said": said[0], "wall": wall, "worker_mb": workers.largest,
            "worker": workers.largest_title, "planted": planted,
            "found": len(copies & found), "other": len(found - copies)}


def show(name: str, r: dict) -> None:
    print(f"{name:<22} {r['inputs']:6d} inputs {r['hours']:6.2f} h {r['segments']:7d} segments | driver "
          f"{r['driver_mb']:6.0f} MB (peaks: own pages {r['anon_mb']:.0f}, object store pages {r['shmem_mb']:.0f}) | largest worker {r['worker_mb']:6.0f} MB ({r['worker']}) | wall "
          f"{r['wall']:6.1f} s | {r['after_startup']:6.1f} audio-s per core-s after start-up | stages {r['stages']} | driver peak MB after each "
          f"stage {r['driver_by_stage']}", flush=True)


def main() -> None:
    from bench.curate import build_corpus

    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=0.5)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--dedup-hours", default="10,100,1000", help="comma-separated sizes; '' skips")
    ap.add_argument("--dedup-bucket-hashes", type=int, default=1_000_000)
    ap.add_argument("--only-dedup", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="audiomill-scale-") as tmp:
        tmp = Path(tmp)
        if args.dedup_hours:
            print(f"dedup alone, 2 local nodes, ray.dedup_bucket_hashes={args.dedup_bucket_hashes:,}", flush=True)
            for hours in [float(h) for h in args.dedup_hours.split(",")]:
                r = dedup_alone(hours, tmp, args.dedup_bucket_hashes)
                print(f"{r['hours']:7g} h | {r['said']} | largest worker {r['worker_mb']:6.0f} MB "
                      f"({r['worker']}) | wall {r['wall']:7.1f} s | planted copies found {r['found']}/{r['planted']}, other relations "
                      f"{r['other']}", flush=True)
        if args.only_dedup:
            return
        build_corpus(tmp / "c1", args.hours * 60, seed=0)
        build_corpus(tmp / "c10", args.hours * 60 * args.scale, seed=1)
        one = run_job(tmp / "c1", tmp / "o1", 2)
        show("1×, one node", one)
        big = run_job(tmp / "c10", tmp / "o10", 2)
        show(f"{args.scale}×, one node", big)
        rows = [(f"driver peak RSS, {args.scale}× / 1×", big["driver_mb"] / one["driver_mb"], "≤ 1.10",
                 big["driver_mb"] / one["driver_mb"] <= 1.1),
                ("driver growth, MB per audio hour", (big["driver_mb"] - one["driver_mb"]) / (big["hours"] - one["hours"]),
                 "≤ 1.00", (big["driver_mb"] - one["driver_mb"]) / (big["hours"] - one["hours"]) <= 1.0),
                (f"largest worker's peak, {args.scale}× / 1×", big["worker_mb"] / one["worker_mb"], "≤ 1.20",
                 big["worker_mb"] / one["worker_mb"] <= 1.2)]
        rows.append(("driver's own pages, MB per audio hour", (big["anon_mb"] - one["anon_mb"]) / (big["hours"] - one["hours"]),
                     "", True))
        if not args.skip_cluster:
            two = on_two_nodes(tmp / "c1", tmp / "o1-2nodes")
            show("1×, two nodes", two)
            same = same_tree(tmp / "o1", tmp / "o1-2nodes")
            rows.append(("2 nodes against 1, same output", float(same), "= 1", same))
        print(f"\n{'figure':<36} {'measured':>9} {'goal':>7}  met")
        for name, value, goal, met in rows:
            print(f"{name:<36} {value:9.2f} {goal:>7}  {('yes' if met else 'NO') if goal else ''}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
