"""Build cost against curate cost, measured side by side in one run on one generated corpus.

    .venv/bin/python bench/build.py [--minutes 10] [--cpus 2]

The corpus (``bench/curate.py``'s generator: TTS speech with pauses, some music, mixed formats) is curated
with the default labelers (``audiomill curate``), then the labelled output is built into examples
(``audiomill build``, default settings: every pretrain task, analysis, compare, mixed scenes, voice chat,
DPO pairs). Each job runs as the CLI in a fresh subprocess on the same ``--cpus`` cores (taskset); its
wall time and the peak proportional set size (PSS) of its whole process tree are measured the same way.

Prints examples per second, peak memory, and the build/curate ratios (goal: ≤ 1 for both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate import build_corpus, tree_pss  # noqa: E402


def job(args: list[str], cpus: int) -> dict:
    """One CLI job in a subprocess confined to ``cpus`` cores: wall seconds and peak PSS (MB) of its tree."""
    import psutil

    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cpus])
    cmd = ["taskset", "-c", cores, sys.executable, "-m", "pipelines.cli", *args, f"ray.num_cpus={cpus}",
           "ray.progress=false"]
    t0 = time.monotonic()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        cwd=str(Path(__file__).resolve().parents[1]))
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc))
        time.sleep(0.5)
    wall = time.monotonic() - t0
    log = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {log[-3000:]}")
    return {"wall": wall, "peak_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="audiomill-bench-build-") as tmp:
        root = Path(tmp)
        seconds = build_corpus(root / "corpus", args.minutes, seed=11)
        print(f"corpus: {seconds / 60:.1f} min of audio", flush=True)
        cur = job(["curate", str(root / "corpus"), str(root / "segments")], args.cpus)
        seg = json.loads((root / "segments" / "manifest.json").read_text())["summary"]
        bld = job(["build", str(root / "segments"), str(root / "examples")], args.cpus)
        ex = json.loads((root / "examples" / "manifest.json").read_text())["summary"]
    n = ex["examples"]
    rows = [
        ("curate (default labelers)", f"{cur['wall']:.1f} s", f"{cur['peak_mb']:.0f} MB", f"{seg['segments']} segments"),
        ("build (default settings)", f"{bld['wall']:.1f} s", f"{bld['peak_mb']:.0f} MB", f"{n} examples"),
    ]
    print(f"\n{'job':<28}{'wall':>10}{'peak PSS':>12}   output")
    for name, wall, mem, out in rows:
        print(f"{name:<28}{wall:>10}{mem:>12}   {out}")
    print(f"\nexamples per second (wall, {args.cpus} cores, Ray start-up included): {n / bld['wall']:.1f}")
    print(f"build / curate wall time: {bld['wall'] / cur['wall']:.2f}   (goal ≤ 1)")
    print(f"build / curate peak memory: {bld['peak_mb'] / cur['peak_mb']:.2f}   (goal ≤ 1)")


if __name__ == "__main__":
    main()
