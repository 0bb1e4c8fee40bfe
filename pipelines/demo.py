"""``make demo``: build a small corpus with known ground truth from packaged real audio and TTS (no
downloads), then ``audiomill run`` on it (``configs/demo.yaml``, embedded Ray, CPU, the ``tiny`` preset):
curate and label → publish → build pretrain / SFT / DPO examples → publish → pretrain → SFT → DPO →
held-out evaluation per task beside chance and the checkpoint before each stage. Prints each phase's
summary, the table of held-out results, one rendered example of each kind and each version with its card.
With ``--mine`` it then closes the loop once more: DPO pairs mined from the SFT policy's sampled replies,
and a short DPO run on them.

    python -m pipelines.demo OUT_DIR [--mine] [key=value ...]

Sources (Debian packages): alsa-utils and sound-theme-freedesktop sounds, klettres-data spoken letters
(label = file name, language = folder), ktuberling-data spoken words, espeak-ng two-speaker dialogs with
known text and turns, espeak-ng six-word phrases in four languages by six voice variants, and music and
General MIDI sound effects (birds, telephones, surf, applause, gunshots, drums) rendered with fluidsynth
from generated MIDI and fluid-soundfont-gm.
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
SPOKEN_VARIANTS = ("", "+m3", "+f2", "+m7", "+f4", "+klatt")
SPOKEN_PER_VARIANT = 8
PHRASE_WORDS = 6
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


def _midi(notes: list[tuple[int, int, int]], program: int, tempo_us: int = 500000, channel: int = 0) -> bytes:
    """Format-0 MIDI bytes from (start_tick, length_ticks, pitch), 480 ticks per beat (channel 9: drums)."""
    on, off = 0x90 | channel, 0x80 | channel
    events = []
    for start, length, pitch in notes:
        events += [(start, on, pitch, 90), (start + length, off, pitch, 0)]
    events.sort(key=lambda e: (e[0], e[1] == on))
    body = b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big") + bytes([0, 0xC0 | channel, program])
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
    """Short pieces (piano, strings, guitar, flute, organ, trumpet, marimba, violin) rendered with fluidsynth;
    one is long enough to be split."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    scale = [57, 59, 60, 62, 64, 65, 67, 69, 71, 72]
    for name, program, beats in [("piano", 0, 40), ("strings", 48, 28), ("guitar", 24, 96), ("flute", 73, 24),
                                 ("organ", 19, 24), ("trumpet", 56, 24), ("marimba", 12, 24), ("violin", 40, 24)]:
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


# General MIDI's sound-effect programs and the drum kit: sounds with a name, several takes of each.
EFFECTS = {"seashore": 122, "bird": 123, "telephone": 124, "applause": 126, "gunshot": 127, "drums": -1}


def build_sound_effects(dest: Path, takes: int = 12) -> None:
    """Sound effects rendered with fluidsynth: ``takes`` clips of each of ``EFFECTS``, at other pitches,
    lengths and rhythms (drums: kick, snare and hi-hat patterns on channel 10)."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    for name, program in EFFECTS.items():
        for take in range(takes):
            if program < 0:
                beat = int(rng.integers(160, 320))
                notes = [(b * beat, beat // 2, int(rng.choice([36, 38, 42, 46]))) for b in range(int(rng.integers(8, 16)))]
                data = _midi(notes, 0, channel=9)
            else:
                n = int(rng.integers(1, 4))
                notes = [(i * 960, int(rng.integers(600, 1400)), int(rng.integers(48, 72))) for i in range(n)]
                data = _midi(notes, program)
            mid = dest / f"{name}-{take}.mid"
            mid.write_bytes(data)
            subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.7", "-r", "16000", "-F", str(dest / f"{name}-{take}.wav"),
                            str(SOUNDFONT), str(mid)], check=True, stdout=subprocess.DEVNULL)
            mid.unlink()


def _copy_labelled(files: list[Path], dest: Path, language: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, dest / f.name)
        word = f.stem.replace("_", " ").lower()
        (dest / f"{f.stem}.json").write_text(json.dumps({"text": word, "label": f.stem, "language": language}))


def build_spoken_phrases(dest: Path, variants: tuple[str, ...], per_variant: int, seed: int = 0) -> None:
    """Six-word phrases in four languages (``demo_train.WORDS``), each a new draw of words, spoken by
    espeak-ng in every voice variant of ``variants``: one WAV each plus a sidecar with the text and language."""
    import random

    from pipelines.demo_train import WORDS

    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    for language, (code, words) in WORDS.items():
        for variant in variants:
            for n in range(per_variant):
                text = " ".join(rng.sample(words, PHRASE_WORDS))
                name = f"{code}{variant.replace('+', '-')}-{n}"
                sf.write(dest / f"{name}.wav", _tts(code + variant, text, dest / "tmp.wav"), 16000, subtype="PCM_16")
                (dest / f"{name}.json").write_text(json.dumps({"text": text, "language": code}))


def build_demo_corpus(root: Path, per_language: int = 6, spoken: int = 0) -> Path:
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
    build_sound_effects(corpus / "effects")
    if spoken:
        build_spoken_phrases(corpus / "phrases", SPOKEN_VARIANTS, spoken)
    sources = [
        {"path": str(corpus / "alsa"), "corpus": "alsa-utils", "license": "GPL-2.0", "kind": "speech"},
        {"path": str(corpus / "freedesktop"), "corpus": "sound-theme-freedesktop", "license": "CC-BY-SA-3.0"},
        {"path": str(corpus / "klettres"), "corpus": "klettres", "license": "GPL-2.0-or-later", "kind": "speech"},
        {"path": str(corpus / "ktuberling"), "corpus": "ktuberling", "license": "GPL-2.0-or-later", "kind": "speech"},
        {"path": str(corpus / "dialogs"), "corpus": "espeak-dialogs", "license": "CC0-1.0", "kind": "speech"},
        {"path": str(corpus / "music"), "corpus": "fluidsynth-music", "license": "MIT", "kind": "music"},
        {"path": str(corpus / "effects"), "corpus": "fluidsynth-effects", "license": "MIT", "kind": "sound"},
    ]
    if spoken:
        sources.append({"path": str(corpus / "phrases"), "corpus": "espeak-phrases", "license": "CC0-1.0",
                        "kind": "speech"})
    config = root / "curate.yaml"
    config.write_text(yaml.safe_dump({"name": "audiomill-demo", "sources": sources}, sort_keys=False))
    return config


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    """Build the corpus, then ``audiomill run`` on it with ``configs/demo.yaml`` (overrides as key=value)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print("usage: python -m pipelines.demo OUT_DIR [--mine] [key=value ...]", file=sys.stderr)
        return 2
    root = Path(argv[0]).resolve()
    mine = "--mine" in argv
    overrides = [a for a in argv[1:] if a != "--mine"]
    from pipelines.config import ConfigError, load_config
    from pipelines.run import RunConfig, run

    root.mkdir(parents=True, exist_ok=True)
    config = build_demo_corpus(root, spoken=SPOKEN_PER_VARIANT)
    n = sum(1 for _ in (root / "corpus").rglob("*") if _.suffix in (".wav", ".ogg", ".oga"))
    print(f"[audiomill] demo corpus: {n} audio files under {root / 'corpus'}")
    sources = yaml.safe_load(config.read_text())["sources"]
    try:
        cfg = load_config(RunConfig, str(DEMO_CONFIG), overrides, {"root": str(root / "run"), "sources": sources})
    except ConfigError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    paths = cfg.paths()
    summary = run(cfg)
    show_examples(Path(paths["examples"]))
    _cards(paths["registry"], summary["versions"].values())
    if mine:
        _loop(root, Path(paths["segments"]), Path(paths["train"]) / "sft" / "final")
    return 0


def _cards(registry: str, refs) -> None:
    """Each published version with its card and browsable page."""
    from pipelines.registry import Registry

    reg = Registry(registry)
    print(f"\n[audiomill] versions in {reg.url}")
    for ref in refs:
        v = reg.get(ref)
        print(f"  {v.ref:<44}parents: {', '.join(v.parents) or '-'}")
        print(f"    card: {reg.url_of(v.name, v.data, 'README.md')}")
        print(f"    page: {reg.url_of(v.name, v.data, 'index.html')}")


def _build(dest: Path, segments: Path, *overrides: str) -> Path:
    from pipelines.build import BuildConfig, run
    from pipelines.config import load_config

    if dest.exists():
        shutil.rmtree(dest)
    print(f"\n[audiomill] build {segments} → {dest}", flush=True)
    run(load_config(BuildConfig, None, list(overrides), {"inputs": [str(segments)], "output": str(dest)}))
    return dest


def _loop(root: Path, segments: Path, policy: Path) -> None:
    """DPO pairs mined from the SFT policy's sampled replies, then a short DPO run on them from it."""
    from pipelines.config import load_config
    from trainer.config import TrainConfig
    from trainer.launch import run_stage

    print(f"\n[audiomill] mine DPO pairs from {policy} → DPO", flush=True)
    mined = _build(root / "examples-mined", segments, f"dpo.policy_dir={policy}", "dpo.samples=4",
                   "sft.voice_chat=false", "sft.mixed_scene=0", "tasks=[asr]")
    sampled = [rec for rec in _records(mined) if rec.get("rejected_kind") == "sampled"]
    print(f"[audiomill] {len(sampled)} DPO pairs mined from {policy}")
    for rec in sampled[:2]:
        print(_render(rec))
    if sampled:
        out = root / "train-mined"
        shutil.rmtree(out, ignore_errors=True)
        result = run_stage(load_config(TrainConfig, None, ["stage=dpo", "max_steps=10", "launcher=local",
                                                           f"model_dir={policy}"],
                                       {"examples": str(mined), "output": str(out)}))
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
