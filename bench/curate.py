"""Curate throughput and memory, measured side by side in one run on a generated corpus.

    .venv/bin/python bench/curate.py [--hours 2] [--scale 10] [--skip-scale] [--skip-lhotse]

Every contender does the same work on the same files: decode + resample to 16 kHz mono, hash the PCM and
the file, landmark-fingerprint it, silero VAD, plan and cut ≤ 30 s segments, measure each (peak, clipping,
SNR, bandwidth, LUFS), encode FLAC, write tar shards, and find exact and near duplicates.

- (1) decode + resample alone and (2) with VAD: floors, one process;
- (3) the curate job on embedded Ray (``audiomill curate``) on 2 cores and (3b) on 1 core (``taskset``: the
  job's driver and Ray's own processes get only those cores too);
- (4) the project's single-process script: the same processors called in a plain loop;
- (5) lhotse: Recording / CutSet / silero timestamps / Shar export, plus our hash, fingerprint and measures.

Single-process figures use the process's CPU time; the Ray job uses wall time × the CPUs it was given,
with and without Ray's start-up. Memory is the proportional set size (PSS) of the job's whole process
tree, so Ray's shared object store counts once; it is compared at 1× and ``--scale``× the corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402

SENTENCES = [
    "The committee will meet again next Tuesday to review the budget.",
    "Bright lanterns floated over the harbour while the band played.",
    "Please remember to water the tomatoes before the afternoon heat.",
    "Our train was delayed by almost an hour because of the storm.",
    "She painted the old fence a cheerful shade of yellow.",
    "Every library card gives access to thousands of recordings.",
    "The mountain road closes in winter when the snow gets deep.",
    "He tuned the guitar slowly and started a quiet melody.",
]
VOICES = ["en-us", "en-us+f2", "en+m3", "en-us+f4", "en+m7", "en-gb"]


def _tts(text: str, voice: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", "--", text], check=True, capture_output=True).stdout
    x, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(x, sr, 16000).astype(np.float32)


def _music(seconds: float, rng) -> np.ndarray:
    out = np.zeros(int(seconds * 16000), np.float32)
    pos = 0
    while pos < len(out):
        n = int(rng.uniform(0.3, 0.8) * 16000)
        t = np.arange(n) / 16000
        f = 220 * 2 ** (rng.integers(0, 12) / 12)
        note = sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3)) * np.exp(-3 * t)
        out[pos:pos + n] += 0.2 * note[: len(out) - pos].astype(np.float32)
        pos += n
    return out


def build_corpus(dest: Path, minutes: float, seed: int) -> float:
    """Distinct files of 20–90 s: shuffled TTS sentences with pauses, some with music; 44.1 kHz stereo
    WAV, 22.05 kHz FLAC and 16 kHz WAV, so decode and resample both work."""
    rng = np.random.default_rng(seed)
    voices = {(s, v): _tts(s, v) for s in SENTENCES[:4] for v in VOICES[:3]}
    voices.update({(s, v): _tts(s, v) for s in SENTENCES[4:] for v in VOICES[3:]})
    keys = list(voices)
    dest.mkdir(parents=True, exist_ok=True)
    total, n = 0.0, 0
    while total < minutes * 60:
        target = rng.uniform(20, 90)
        parts, length = [], 0.0
        while length < target:
            if rng.random() < 0.15:
                x = _music(rng.uniform(3, 12), rng)
            else:
                x = voices[keys[rng.integers(len(keys))]] * rng.uniform(0.3, 1.0)
            parts += [x, np.zeros(int(rng.uniform(0.2, 1.5) * 16000), np.float32)]
            length += (len(x) / 16000) + len(parts[-1]) / 16000
        x = np.concatenate(parts) + rng.normal(0, 0.002, sum(map(len, parts))).astype(np.float32)
        kind = n % 3
        if kind == 0:
            y = soxr.resample(x, 16000, 44100)
            sf.write(dest / f"f{n:05d}.wav", np.stack([y, y * 0.9], axis=1), 44100, subtype="PCM_16")
        elif kind == 1:
            sf.write(dest / f"f{n:05d}.flac", soxr.resample(x, 16000, 22050), 22050)
        else:
            sf.write(dest / f"f{n:05d}.wav", x, 16000, subtype="PCM_16")
        total += len(x) / 16000
        n += 1
    return total


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def files_of(corpus: Path) -> list[str]:
    return sorted(str(p) for p in corpus.iterdir())


def bench_decode(corpus: Path, with_vad: bool) -> float:
    from processors.audio import iter_standardised
    from processors.vad import SileroVad

    vad = SileroVad() if with_vad else None
    c0, seconds = _cpu(), 0.0
    for f in files_of(corpus):
        x = np.concatenate(list(iter_standardised(f)))
        seconds += len(x) / 16000
        if vad is not None:
            vad.probs(x)
    return seconds / (_cpu() - c0)


def _dedup(found: list) -> int:
    """Exact and near duplicates over (path, pcm hash, fingerprint, duration): what the job's barrier does."""
    from processors.audio import iter_standardised
    from processors.dedup import DedupItem, NearParams, SpectralVerifier, find_relations, resolve

    items = [DedupItem(p, h, fp, d, (p,)) for p, h, fp, d in found]
    verify = SpectralVerifier(lambda uri, s, e: iter_standardised(uri, s, e))
    return len(resolve(items, find_relations(items, NearParams(), verify)).dropped)


def bench_script(corpus: Path, out: Path) -> float:
    """The plain version: one process, whole files, the project's processors, a webdataset TarWriter."""
    import webdataset as wds

    from processors.audio import TARGET_SR, to_pcm16
    from processors.fingerprint import Fingerprinter, PcmHasher
    from processors.segment import SegmentParams, cut_chunk, plan_chunk
    from processors.vad import SileroVad, VadParams
    from schemas.input import InputItem

    vad, seg_params, vad_params = SileroVad(), SegmentParams(), VadParams()
    c0, seconds, found = _cpu(), 0.0, []
    with wds.TarWriter(str(out / "script.tar")) as sink:
        for f in files_of(corpus):
            file_hash = hashlib.sha256(Path(f).read_bytes()).hexdigest()
            x, sr = sf.read(f, dtype="float32", always_2d=True)
            x = soxr.resample(x.mean(axis=1), sr, TARGET_SR, quality="HQ").astype(np.float32)
            seconds += len(x) / TARGET_SR
            h, fp = PcmHasher(), Fingerprinter()
            h.update(to_pcm16(x))
            fp.update(x)
            found.append((f, h.hexdigest(), fp.finish(), len(x) / TARGET_SR))
            item = InputItem.local(f, corpus="bench", license="x", split="train")
            plans = plan_chunk(x, vad.probs(x), item, True, seg_params, vad_params)
            for seg, flac in cut_chunk(x, plans, item, file_hash, 0.0):
                sink.write({"__key__": seg.id, "json": seg.to_json().encode(), "flac": flac})
    _dedup(found)
    return seconds / (_cpu() - c0)


def bench_lhotse(corpus: Path, out: Path) -> float:
    import torch
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from silero_vad import get_speech_timestamps, load_silero_vad

    from processors.audio import to_pcm16
    from processors.fingerprint import Fingerprinter, PcmHasher
    from processors.measure import measure

    torch.set_num_threads(1)
    c0 = _cpu()
    model = load_silero_vad()
    recordings = RecordingSet.from_recordings(Recording.from_file(f) for f in files_of(corpus)).resample(16000)
    sups, seconds, found = [], 0.0, []
    for rec in recordings:
        hashlib.sha256(Path(rec.sources[0].source).read_bytes()).hexdigest()
        x = rec.load_audio().mean(axis=0).astype(np.float32)
        seconds += rec.duration
        h, fp = PcmHasher(), Fingerprinter()
        h.update(to_pcm16(x))
        fp.update(x)
        found.append((rec.sources[0].source, h.hexdigest(), fp.finish(), rec.duration))
        for i, ts in enumerate(get_speech_timestamps(torch.from_numpy(x), model, return_seconds=True,
                                                     max_speech_duration_s=30)):
            sups.append(SupervisionSegment(id=f"{rec.id}-{i}", recording_id=rec.id, start=ts["start"],
                                           duration=ts["end"] - ts["start"], channel=rec.channel_ids))
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=SupervisionSet.from_segments(sups))
    cuts = cuts.trim_to_supervisions(keep_overlapping=False)
    cuts = CutSet.from_cuts(c.with_custom("quality", measure(c.load_audio()[0])) for c in cuts)
    (out / "shar").mkdir()
    cuts.to_shar(out / "shar", fields={"recording": "flac"}, shard_size=1000)
    _dedup(found)
    return seconds / (_cpu() - c0)


def tree_pss(root) -> float:
    """MB of memory of ``root`` and its descendants, shared pages counted once (proportional set size)."""
    import psutil

    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total / 2**20


def job_output(proc, out: Path, t0: float) -> tuple[float, str, dict, dict]:
    """A finished curate process: its wall time since ``t0``, its log, its summary and its stage seconds;
    RuntimeError with the log's end when it failed."""
    wall = time.monotonic() - t0
    log = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"curate failed: {log[-3000:]}")
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    job_line = [ln for ln in log.splitlines() if "stage seconds" in ln]
    stages = dict(kv.split("=") for kv in job_line[0].split()[2:]) if job_line else {}
    return wall, log, summary, stages


def bench_job(corpus: Path, out: Path, cpus: int, memory: bool = False) -> dict:
    """The curate CLI in a subprocess, so its Ray is fresh, confined to ``cpus`` cores (taskset), so Ray's
    own processes and the driver share them too: audio-s per core-s with and after start-up, the job's
    stage times, and with ``memory`` the peak PSS of its process tree and of its driver alone. Reading
    every process's smaps costs CPU, so runs that time the job do not sample memory."""
    import psutil

    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cpus])
    cmd = ["taskset", "-c", cores, sys.executable, "-m", "pipelines.cli", "curate", str(corpus), str(out),
           f"ray.num_cpus={cpus}", "ray.progress=false", "keep_work=false", "labelers=[none]"]
    t0 = time.monotonic()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = driver = 0.0
    while proc.poll() is None:
        if memory:
            peak = max(peak, tree_pss(proc))
            try:
                driver = max(driver, proc.memory_full_info().pss / 2**20)
            except psutil.Error:
                pass
        time.sleep(0.5)
    wall, log, summary, stages = job_output(proc, out, t0)
    after = [ln for ln in log.splitlines() if "after Ray start-up" in ln]
    decoded = summary["audio_seconds_decoded"]
    return {"with_startup": decoded / (wall * cpus), "after_startup": float(after[0].split()[-1]) / cpus if after else float("nan"),
            "peak_mb": peak, "driver_mb": driver, "segments": summary["segments"], "stages": stages, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--skip-lhotse", action="store_true")
    args = ap.parse_args()
    rows = []

    def report(name: str, value: float, goal: float | None, note: str = "") -> None:
        met = "" if goal is None else ("yes" if value >= goal else "NO")
        rows.append((name, value, goal, met, note))
        print(f"  {name:<44} {value:7.2f}  {'' if goal is None else f'≥ {goal:.2f}':>7}  {met:>3}  {note}", flush=True)

    with tempfile.TemporaryDirectory(prefix="audiomill-bench-") as tmp:
        tmp = Path(tmp)
        seconds = build_corpus(tmp / "corpus", args.hours * 60, seed=0)
        print(f"corpus: {len(files_of(tmp / 'corpus'))} files, {seconds / 3600:.2f} h", flush=True)
        r1 = bench_decode(tmp / "corpus", with_vad=False)
        r2 = bench_decode(tmp / "corpus", with_vad=True)
        print(f"(1) decode + resample            {r1:8.1f} audio-s per core-s", flush=True)
        print(f"(2) decode + resample + VAD      {r2:8.1f}   (a floor: no hashing, fingerprint, measures, FLAC)", flush=True)
        j2 = bench_job(tmp / "corpus", tmp / "out2", 2)
        print(f"(3) curate job, 2 CPUs           {j2['with_startup']:8.1f}   ({j2['after_startup']:.1f} after Ray start-up; "
              f"{j2['segments']} segments; stage seconds {j2['stages']})", flush=True)
        j1 = bench_job(tmp / "corpus", tmp / "out1", 1)
        print(f"(3b) curate job, 1 CPU           {j1['with_startup']:8.1f}   ({j1['after_startup']:.1f} after Ray start-up; "
              f"stage seconds {j1['stages']})", flush=True)
        (tmp / "out4").mkdir()
        r4 = bench_script(tmp / "corpus", tmp / "out4")
        print(f"(4) single-process script        {r4:8.1f}", flush=True)
        r5 = float("nan")
        if not args.skip_lhotse:
            (tmp / "out5").mkdir()
            r5 = bench_lhotse(tmp / "corpus", tmp / "out5")
            print(f"(5) lhotse + the same extra work {r5:8.1f}", flush=True)
        m1 = m10 = None
        if not args.skip_scale:
            m1 = bench_job(tmp / "corpus", tmp / "outm1", 2, memory=True)
            print(f"memory at 1×: peak {m1['peak_mb']:.0f} MB (driver {m1['driver_mb']:.0f} MB)", flush=True)
            build_corpus(tmp / "corpus10", args.hours * 60 * args.scale, seed=1)
            m10 = bench_job(tmp / "corpus10", tmp / "out10", 2, memory=True)
            print(f"(3) at {args.scale}×: {m10['with_startup']:.1f} ({m10['after_startup']:.1f} after start-up, "
                  f"memory sampled); peak {m10['peak_mb']:.0f} MB (driver {m10['driver_mb']:.0f} MB); "
                  f"stage seconds {m10['stages']}", flush=True)
        print(f"\nratios ({args.hours:g} h of audio, {os.cpu_count()} cores)       measured     goal  met")
        report("job / lhotse, per core", j2["with_startup"] / r5, 2.0, "(Ray start-up included)")
        report("job / lhotse, per core, after Ray start-up", j2["after_startup"] / r5, 2.0)
        report("job / single-process script, per core", j2["with_startup"] / r4, 0.8, "(Ray start-up included)")
        report("job / script, per core, after Ray start-up", j2["after_startup"] / r4, 0.8)
        report("2 CPUs / 1 CPU, job throughput", 2 * j2["with_startup"] / j1["with_startup"], 1.8, "(start-up included)")
        report("2 CPUs / 1 CPU, after Ray start-up", 2 * j2["after_startup"] / j1["after_startup"], 1.8)
        if m10 is not None:
            ratio = m10["peak_mb"] / m1["peak_mb"]
            met = "yes" if ratio <= 1.2 else "NO"
            print(f"  {'peak PSS ' + str(args.scale) + '× / 1×':<44} {ratio:7.2f}  {'≤ 1.20':>7}  {met:>3}  "
                  f"({m1['peak_mb']:.0f} MB → {m10['peak_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
