"""Curate throughput and memory, measured side by side in one run on a generated corpus.

    .venv/bin/python bench/curate.py [--minutes 30] [--scale 10] [--skip-scale]

Prints audio-seconds per core-second for: (1) decode + resample alone, (2) plus VAD alone (the floor),
(3) the full curate job on embedded Ray, (4) a straightforward single-process script doing the same
with the same libraries, (5) lhotse doing the same work (recordings → silero VAD → Shar export); then
the curate job's peak memory (all Ray processes) for the corpus and for ``--scale`` times the corpus.
Single-process figures use the process's CPU time; the Ray job uses wall time × the CPUs it was given
(start-up included; the job's own figure after Ray start-up is printed too). Memory is the proportional
set size (PSS) of the job's whole process tree, so Ray's shared object store counts once.
Goals: (3) ≥ 0.7 × (2), (3) ≥ 2 × (5), peak(scale×) ≤ 1.2 × peak(1×).
"""

from __future__ import annotations

import argparse
import io
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
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
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


def bench_script(corpus: Path, out: Path) -> float:
    """The straightforward version: one process, whole files, silero timestamps, a webdataset TarWriter."""
    import webdataset as wds

    from processors.audio import encode_flac
    from processors.measure import measure
    from processors.vad import FRAME, SileroVad, VadParams, plan_speech

    vad, params = SileroVad(), VadParams()
    c0, seconds = _cpu(), 0.0
    with wds.TarWriter(str(out / "script.tar")) as sink:
        for f in files_of(corpus):
            x, sr = sf.read(f, dtype="float32", always_2d=True)
            x = soxr.resample(x.mean(axis=1), sr, 16000).astype(np.float32)
            seconds += len(x) / 16000
            for i, (s, e) in enumerate(plan_speech(vad.probs(x), params)):
                seg = x[s * FRAME:e * FRAME]
                sink.write({"__key__": f"{Path(f).stem}-{i:04d}", "flac": encode_flac(seg),
                            "json": {"start": s * FRAME / 16000, **measure(seg)}})
    return seconds / (_cpu() - c0)


def bench_lhotse(corpus: Path, out: Path) -> float:
    import torch
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from silero_vad import get_speech_timestamps, load_silero_vad

    torch.set_num_threads(1)
    c0 = _cpu()
    model = load_silero_vad()
    recordings = RecordingSet.from_recordings(Recording.from_file(f) for f in files_of(corpus)).resample(16000)
    sups, seconds = [], 0.0
    for rec in recordings:
        audio = torch.from_numpy(rec.load_audio().mean(axis=0))
        seconds += rec.duration
        for i, ts in enumerate(get_speech_timestamps(audio, model, return_seconds=True, max_speech_duration_s=30)):
            sups.append(SupervisionSegment(id=f"{rec.id}-{i}", recording_id=rec.id, start=ts["start"],
                                           duration=ts["end"] - ts["start"], channel=rec.channel_ids))
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=SupervisionSet.from_segments(sups))
    cuts = cuts.trim_to_supervisions(keep_overlapping=False)
    (out / "shar").mkdir()
    cuts.to_shar(out / "shar", fields={"recording": "flac"}, shard_size=1000)
    return seconds / (_cpu() - c0)


def tree_pss(root) -> float:
    """MB of memory of ``root`` and its descendants, shared pages (Ray's object store) counted once
    (proportional set size)."""
    import psutil

    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total / 2**20


def bench_job(corpus: Path, out: Path, cpus: int) -> tuple[float, float, dict]:
    """Runs the curate CLI in a subprocess so its Ray is fresh; returns (audio-s per core-s, peak MB, summary)."""
    import json

    import psutil

    cmd = [sys.executable, "-m", "pipelines.cli", "curate", str(corpus), str(out), f"ray.num_cpus={cpus}",
           "ray.progress=false"]
    t0 = time.monotonic()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc))
        time.sleep(0.25)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"curate failed: {proc.stdout.read()[-2000:]}")
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    job_s = [line for line in proc.stdout.read().splitlines() if "after Ray start-up" in line]
    summary["after_startup"] = float(job_s[0].split()[-1]) / cpus if job_s else float("nan")
    return summary["audio_seconds_decoded"] / (wall * cpus), peak, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="audiomill-bench-") as tmp:
        tmp = Path(tmp)
        seconds = build_corpus(tmp / "corpus", args.minutes, seed=0)
        print(f"corpus: {len(files_of(tmp / 'corpus'))} files, {seconds / 60:.1f} min", flush=True)
        r1 = bench_decode(tmp / "corpus", with_vad=False)
        print(f"(1) decode + resample           {r1:8.1f} audio-s per core-s", flush=True)
        r2 = bench_decode(tmp / "corpus", with_vad=True)
        print(f"(2) decode + resample + VAD     {r2:8.1f}   (the floor)", flush=True)
        r3, peak1, summary = bench_job(tmp / "corpus", tmp / "out1", args.cpus)
        print(f"(3) curate job ({args.cpus} CPUs)         {r3:8.1f}   ({summary['after_startup']:.1f} after Ray start-up; "
              f"segments={summary['segments']}, peak {peak1:.0f} MB)", flush=True)
        (tmp / "out4").mkdir()
        r4 = bench_script(tmp / "corpus", tmp / "out4")
        print(f"(4) single-process script       {r4:8.1f}", flush=True)
        (tmp / "out5").mkdir()
        r5 = bench_lhotse(tmp / "corpus", tmp / "out5")
        print(f"(5) lhotse + silero + Shar      {r5:8.1f}", flush=True)
        print(f"ratios: (3)/(2) = {r3 / r2:.2f} (goal ≥ 0.7)   (3)/(5) = {r3 / r5:.2f} (goal ≥ 2)   "
              f"(3)/(4) = {r3 / r4:.2f}", flush=True)
        a = summary["after_startup"]
        print(f"after Ray start-up: (3)/(2) = {a / r2:.2f}   (3)/(5) = {a / r5:.2f}", flush=True)
        if not args.skip_scale:
            big = args.minutes * args.scale
            build_corpus(tmp / "corpus10", big, seed=1)
            r10, peak10, s10 = bench_job(tmp / "corpus10", tmp / "out10", args.cpus)
            print(f"memory: peak {peak1:.0f} MB for {args.minutes:.0f} min, {peak10:.0f} MB for {big:.0f} min: "
                  f"ratio {peak10 / peak1:.2f} (goal ≤ 1.2); throughput at {args.scale}×: {r10:.1f} "
                  f"({s10['after_startup']:.1f} after Ray start-up)", flush=True)


if __name__ == "__main__":
    main()
