"""``make demo``: build a small corpus with known ground truth from packaged real audio and TTS (no
downloads), curate and label it on an embedded local Ray, build pretrain / SFT / DPO examples from it, and
close the loop once: a short SFT run, DPO pairs mined from that policy's sampled replies, and a short DPO
run on them; then publish the segments and the examples as versions in a local registry. Prints the
summaries, the examples per stage and task, one rendered example of each, and each version with its card.

    python -m pipelines.demo OUT_DIR [key=value ...]

Sources (Debian packages): alsa-utils and sound-theme-freedesktop sounds, klettres-data spoken letters
(label = file name, language = folder), ktuberling-data spoken words, espeak-ng two-speaker dialogs with
known text and turns, and music rendered with fluidsynth from generated MIDI and fluid-soundfont-gm.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

SHARE = Path("/usr/share")
SOUNDFONT = SHARE / "sounds/sf2/FluidR3_GM.sf2"

DIALOGS = [
    [("en-us+m3", "Good morning. Did you finish the report about the river project?"),
     ("en-us+f2", "Almost. I still need the water samples from the second site."),
     ("en-us+m3", "They arrived yesterday. I will send them after lunch."),
     ("en-us+f2", "Perfect, then we can present it on Friday.")],
    [("en+m1", "Where should we put the new bookshelf?"),
     ("en+f3", "Next to the window, where the light is good for reading."),
     ("en+m1", "It is heavy. Can you help me carry it upstairs?"),
     ("en+f3", "Of course. Let me find my gloves first.")],
    [("en-us+f4", "Have you ever tried cooking rice in a clay pot?"),
     ("en-us+m7", "Never. Does it taste different from a normal pan?"),
     ("en-us+f4", "A little smoky, and the bottom gets crispy and golden."),
     ("en-us+m7", "That sounds wonderful. Teach me this weekend.")],
]


def _tts(voice: str, text: str, path: Path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), "--", text], check=True)
    x, sr = sf.read(path, dtype="float32")
    path.unlink()
    import soxr

    return soxr.resample(x, sr, 16000).astype(np.float32)


def build_dialogs(dest: Path) -> None:
    """Two-speaker dialogs: one WAV each plus a .json sidecar with the text and the speaker turns."""
    dest.mkdir(parents=True, exist_ok=True)
    gap = np.zeros(int(0.5 * 16000), np.float32)
    for n, dialog in enumerate(DIALOGS):
        parts, turns, t = [], [], 0.5
        speakers = {v: f"S{i}" for i, v in enumerate(dict.fromkeys(v for v, _ in dialog))}
        for voice, text in dialog:
            x = _tts(voice, text, dest / "tmp.wav")
            turns.append({"speaker": speakers[voice], "start_s": round(t, 3), "end_s": round(t + len(x) / 16000, 3)})
            parts += [gap, x]
            t += 0.5 + len(x) / 16000
        sf.write(dest / f"dialog{n}.wav", np.concatenate(parts + [gap]), 16000, subtype="PCM_16")
        side = {"text": " ".join(text for _, text in dialog), "language": "en",
                "labels": {"speakers": {"count": len(speakers), "turns": turns, "by": "manifest"}}}
        (dest / f"dialog{n}.json").write_text(json.dumps(side, indent=1))


def _midi(notes: list[tuple[int, int, int]], program: int, tempo_us: int = 500000) -> bytes:
    """Format-0 MIDI bytes from (start_tick, length_ticks, pitch), 480 ticks per beat."""
    events = []
    for start, length, pitch in notes:
        events += [(start, 0x90, pitch, 90), (start + length, 0x80, pitch, 0)]
    events.sort(key=lambda e: (e[0], e[1] == 0x90))
    body = b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big") + bytes([0, 0xC0, program])
    now = 0
    for tick, status, pitch, vel in events:
        body += _varlen(tick - now) + bytes([status, pitch, vel])
        now = tick
    body += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(body)) + body


def _varlen(v: int) -> bytes:
    out = [v & 0x7F]
    while v := v >> 7:
        out.insert(0, (v & 0x7F) | 0x80)
    return bytes(out)


def build_music(dest: Path) -> None:
    """Short pieces (piano, strings, guitar) rendered with fluidsynth; one is long enough to be split."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    scale = [57, 59, 60, 62, 64, 65, 67, 69, 71, 72]
    for name, program, beats in [("piano", 0, 40), ("strings", 48, 28), ("guitar", 24, 96)]:
        notes = []
        for b in range(beats):
            notes.append((b * 480, 440, int(rng.choice(scale)) + 12))
            if b % 4 == 0:
                root = int(rng.choice(scale[:5]))
                notes += [(b * 480, 1900, root - 12), (b * 480, 1900, root - 5)]
        mid = dest / f"{name}.mid"
        mid.write_bytes(_midi(notes, program))
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.7", "-r", "16000", "-F", str(dest / f"{name}.wav"),
                        str(SOUNDFONT), str(mid)], check=True, stdout=subprocess.DEVNULL)
        mid.unlink()


def _copy_labelled(files: list[Path], dest: Path, language: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, dest / f.name)
        word = f.stem.replace("_", " ").lower()
        (dest / f"{f.stem}.json").write_text(json.dumps({"text": word, "label": f.stem, "language": language}))


def build_demo_corpus(root: Path, per_language: int = 6) -> Path:
    """Build the corpus under ``root`` and return the curate config (YAML) that lists its sources."""
    corpus = root / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    for src, name in [(SHARE / "sounds/alsa", "alsa"), (SHARE / "sounds/freedesktop/stereo", "freedesktop")]:
        (corpus / name).mkdir(parents=True)
        for f in sorted(src.iterdir()):
            shutil.copy(f, corpus / name / f.name)
    for lang in ["en", "fr", "de", "it", "nl"]:
        _copy_labelled(sorted((SHARE / "klettres" / lang / "alpha").glob("*.ogg"))[:per_language],
                       corpus / "klettres" / lang, lang)
        _copy_labelled(sorted((SHARE / "ktuberling/sounds" / lang).glob("*.ogg"))[:per_language],
                       corpus / "ktuberling" / lang, lang)
    build_dialogs(corpus / "dialogs")
    build_music(corpus / "music")
    sources = [
        {"path": str(corpus / "alsa"), "corpus": "alsa-utils", "license": "GPL-2.0", "kind": "speech"},
        {"path": str(corpus / "freedesktop"), "corpus": "sound-theme-freedesktop", "license": "CC-BY-SA-3.0"},
        {"path": str(corpus / "klettres"), "corpus": "klettres", "license": "GPL-2.0-or-later", "kind": "speech"},
        {"path": str(corpus / "ktuberling"), "corpus": "ktuberling", "license": "GPL-2.0-or-later", "kind": "speech"},
        {"path": str(corpus / "dialogs"), "corpus": "espeak-dialogs", "license": "CC0-1.0", "kind": "speech"},
        {"path": str(corpus / "music"), "corpus": "fluidsynth-music", "license": "MIT", "kind": "music"},
    ]
    config = root / "curate.yaml"
    config.write_text(yaml.safe_dump({"name": "audiomill-demo", "sources": sources}, sort_keys=False))
    return config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m pipelines.demo OUT_DIR [key=value ...]", file=sys.stderr)
        return 2
    root = Path(argv[0]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = build_demo_corpus(root)
    n = sum(1 for _ in (root / "corpus").rglob("*") if _.suffix in (".wav", ".ogg", ".oga"))
    print(f"[audiomill] demo corpus: {n} audio files under {root / 'corpus'}")
    out = root / "segments"
    if out.exists():
        shutil.rmtree(out)
    from pipelines.config import ConfigError, load_config
    from pipelines.curate import CurateConfig, run

    try:
        cfg = load_config(CurateConfig, str(config), argv[1:], {"output": str(out)})
    except ConfigError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    run(cfg)
    examples = _build(root / "examples", out)
    show_examples(examples)
    _loop(root, examples, out)
    _publish(root, [out, examples])
    return 0


def _publish(root: Path, outputs: list[Path]) -> None:
    """Publish the demo's segments and examples as versions in a local registry."""
    from pipelines.registry import Registry

    reg = Registry(str(root / "registry"))
    print(f"\n[audiomill] publish to {reg.url}")
    for out in outputs:
        v, new = reg.publish(str(out))
        card = reg.url_of(v.name, v.data, "README.md")
        print(f"  {v.ref:<44}{'new' if new else 'already published'}; parents: {', '.join(v.parents) or '-'}")
        print(f"    card: {card}")
        print(f"    page: {reg.url_of(v.name, v.data, 'index.html')}")


def _build(dest: Path, segments: Path, *overrides: str) -> Path:
    from pipelines.build import BuildConfig, run
    from pipelines.config import load_config

    if dest.exists():
        shutil.rmtree(dest)
    print(f"\n[audiomill] build {segments} → {dest}", flush=True)
    run(load_config(BuildConfig, None, list(overrides), {"inputs": [str(segments)], "output": str(dest)}))
    return dest


def _loop(root: Path, examples: Path, segments: Path) -> None:
    """SFT for a few steps, pairs mined from the policy's samples, then DPO on them from the SFT model."""
    from pipelines.config import load_config
    from trainer.config import TrainConfig
    from trainer.recipe import run_stage

    train = root / "train"
    if train.exists():
        shutil.rmtree(train)
    print("\n[audiomill] SFT → mine DPO pairs from the policy → DPO", flush=True)
    run_stage(load_config(TrainConfig, None, ["stage=sft", "max_steps=150", "launcher=local", "lr=0.003"],
                          {"examples": str(examples), "output": str(train)}))
    policy = train / "sft" / "final"
    mined = _build(root / "examples-mined", segments, f"dpo.policy_dir={policy}", "dpo.samples=4",
                   "sft.voice_chat=false", "sft.mixed_scene=0", "tasks=[asr]")
    sampled = [rec for rec in _records(mined) if rec.get("rejected_kind") == "sampled"]
    print(f"[audiomill] {len(sampled)} DPO pairs mined from {policy}")
    for rec in sampled[:2]:
        print(_render(rec))
    if sampled:
        result = run_stage(load_config(TrainConfig, None, ["stage=dpo", "max_steps=10", "launcher=local",
                                                           f"model_dir={policy}"],
                                       {"examples": str(mined), "output": str(train / "mined")}))
        print(f"[audiomill] DPO on mined pairs: {json.dumps(result.get('eval'))}")


def _records(examples: Path) -> list[dict]:
    import tarfile

    out = []
    for tar in sorted(examples.glob("*/**/*.tar")):
        with tarfile.open(tar) as t:
            out += [json.loads(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".json")]
    return out


def _render(rec: dict) -> str:
    def content(c) -> str:
        if c["type"] == "audio":
            a = rec["audio"][c["audio"]]
            return f"<audio {a['segment_id']} {a['duration_s']:.1f} s>"
        return c["text"]

    lines = [f"  [{rec['stage']}/{rec['task']}] template {rec['template']}"]
    if rec["stage"] == "pretrain":
        lines.append(f"    prompt: <audio {rec['audio'][0]['duration_s']:.1f} s> {rec['prompt']}")
        lines.append(f"    target: {rec['target']}")
    for m in rec.get("messages", []):
        lines.append(f"    {m['role']}: " + " ".join(content(c) for c in m["content"]))
    if rec["stage"] == "dpo":
        lines.append(f"    chosen:   {rec['chosen']}")
        lines.append(f"    rejected: {rec['rejected']}  ({rec['rejected_kind']}, scores {rec['score']})")
    return "\n".join(lines)


def show_examples(examples: Path) -> None:
    from collections import Counter

    records = _records(examples)
    counts = Counter((r["stage"], r["task"]) for r in records)
    print("\nexamples per stage and task (held-out sets included)")
    for (stage, task), n in sorted(counts.items()):
        print(f"  {stage + '/' + task:<28}{n:>6}")
    print("\none example of each")
    seen = set()
    for rec in sorted(records, key=lambda r: r["id"]):
        if (rec["stage"], rec["task"]) not in seen:
            seen.add((rec["stage"], rec["task"]))
            print(_render(rec))


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.exit(main())
