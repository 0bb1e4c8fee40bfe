"""Makers of bad, odd and hostile inputs: each writes into a folder and returns what to pass as INPUT."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.factories import ffmpeg, silence, tone, tts, write

_GOOD: dict[str, bytes] = {}


def good_bytes() -> bytes:
    """A short real speech clip (cached), the one accepted input of most cases."""
    if "wav" not in _GOOD:
        import io

        buf = io.BytesIO()
        sf.write(buf, np.concatenate([silence(0.2), tts("A good recording sits beside the bad one.", "en-us+f2"),
                                      silence(0.2)]), 16000, format="WAV", subtype="PCM_16")
        _GOOD["wav"] = buf.getvalue()
    return _GOOD["wav"]


def with_good(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "good.wav").write_bytes(good_bytes())
    return d


def wav_header(path: Path, **fields) -> None:
    """Rewrite fields of a canonical 44-byte PCM WAV header: sample_rate, channels, data_bytes."""
    b = bytearray(path.read_bytes())
    if "sample_rate" in fields:
        b[24:28] = struct.pack("<I", fields["sample_rate"])
    if "channels" in fields:
        b[22:24] = struct.pack("<H", fields["channels"])
    if "data_bytes" in fields:
        b[40:44] = struct.pack("<I", fields["data_bytes"])
    path.write_bytes(bytes(b))


def data_bytes(path: Path) -> int:
    return struct.unpack("<I", path.read_bytes()[40:44])[0]


# ---- media ---------------------------------------------------------------------------------------------

def empty_file(d):
    (with_good(d) / "bad.wav").write_bytes(b"")
    return d


def random_bytes(d):
    (with_good(d) / "bad.wav").write_bytes(np.random.default_rng(1).bytes(20000))
    return d


def text_named_mp3(d):
    (with_good(d) / "bad.mp3").write_text("definitely not an mp3\n" * 100)
    return d


def truncated_flac(d):
    flac = write(with_good(d) / "full.flac", tone(5.0, 200))
    (d / "bad.flac").write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    flac.unlink()
    return d


def nan_samples(d):
    x = tone(2.0)
    x[500:600] = np.nan
    write(with_good(d) / "bad.wav", x, subtype="FLOAT")
    return d


def inf_samples(d):
    x = tone(2.0)
    x[100] = np.inf
    write(with_good(d) / "bad.wav", x, subtype="FLOAT")
    return d


def five_ms(d):
    write(with_good(d) / "bad.wav", tone(0.005))
    return d


def digital_silence(d):
    write(with_good(d) / "bad.wav", silence(20.0))
    return d


def one_hertz(d):
    """A 444-byte WAV whose header says 1 Hz: 200 s of 'sound' before the fix."""
    p = write(with_good(d) / "bad.wav", tone(0.0125, 300))
    wav_header(p, sample_rate=1)
    return d


def megahertz(d):
    p = write(with_good(d) / "bad.wav", tone(1.0, 300))
    wav_header(p, sample_rate=2_000_000)
    return d


def header_claims_half(d):
    p = write(with_good(d) / "bad.wav", tts("The header hides the second half of this recording.", "en-us") * 0.5)
    wav_header(p, data_bytes=data_bytes(p) // 2)
    return d


def header_claims_double(d):
    p = write(with_good(d) / "bad.wav", tts("The header promises twice the audio there is.", "en-us") * 0.5)
    wav_header(p, data_bytes=data_bytes(p) * 2)
    return d


def thousand_channels(d):
    """A header that claims 1000 channels at 768 kHz: a naive block read would ask for tens of GB."""
    p = write(with_good(d) / "bad.wav", tone(2.0, 300))
    wav_header(p, channels=1000, sample_rate=768000)
    return d


def named_pipe(d):
    os.mkfifo(with_good(d) / "bad.wav")
    return d


def symlink_loop(d):
    with_good(d)
    os.symlink(d / "b.wav", d / "a.wav")
    os.symlink(d / "a.wav", d / "b.wav")
    return d


def dangling_symlink(d):
    os.symlink(with_good(d) / "gone.wav", d / "bad.wav")
    return d


def directory_named_wav(d):
    (with_good(d) / "bad.wav").mkdir()
    return d


def latin1_name(d):
    with_good(d)
    with open(os.path.join(os.fsencode(d), b"caf\xe9.wav"), "wb") as f:
        f.write(write(d / "tmp.wav", tts("A name in Latin one.", "en+m3")).read_bytes())
    (d / "tmp.wav").unlink()
    return d


def exact_copy(d):
    (with_good(d) / "z_copy.wav").write_bytes(good_bytes())     # a tie on every rank but the uri
    return d


def reencoded_copy(d):
    ffmpeg(with_good(d) / "good.wav", d / "copy.mp3", "-b:a", "64k")
    return d


def noisy_corrupt_m4a(d):
    """An AAC file with its middle overwritten: ffmpeg logs an error per frame (far more than a pipe holds)."""
    with_good(d)
    src = write(d / "noise.wav", np.random.default_rng(2).normal(0, 0.2, 16000 * 300).astype(np.float32))
    m4a = ffmpeg(src, d / "bad.m4a", "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart")   # index first
    src.unlink()
    data = bytearray(m4a.read_bytes())
    rng = np.random.default_rng(3)
    start = len(data) // 5
    data[start:] = rng.bytes(len(data) - start)
    m4a.write_bytes(bytes(data))
    return d


def garbage_ogg(d):
    (with_good(d) / "bad.ogg").write_bytes(b"OggS" + np.random.default_rng(4).bytes(5000))
    return d


# ---- sidecars ------------------------------------------------------------------------------------------

def sidecar(name: str, content: bytes):
    def make(d):
        (with_good(d) / f"good.{name}").write_bytes(content)
        return d
    make.__name__ = f"sidecar_{name}"
    return make


# ---- manifests -----------------------------------------------------------------------------------------

def manifest(name: str, rows: str, files: tuple[str, ...] = ("good.wav",)):
    """A manifest ``name`` with ``rows`` (text), beside ``files`` (copies of the good clip)."""
    def make(d):
        d.mkdir(parents=True, exist_ok=True)
        for f in files:
            (d / f).write_bytes(good_bytes())
        (d / name).write_bytes(rows.encode("utf-8") if isinstance(rows, str) else rows)
        return d / name
    return make


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


def mount_tmpfs(path: Path, size: str, readonly: bool = False) -> bool:
    """A small tmpfs at ``path`` (root only); False where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
