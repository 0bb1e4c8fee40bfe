"""Decode and standardise audio: any input → 16 kHz mono float32, streamed in bounded blocks.

libsndfile (through soundfile) reads WAV, FLAC, Ogg Vorbis/Opus and MP3; anything it cannot read goes
through Debian's ffmpeg. Resampling is soxr's streaming resampler, so a 3-hour file never sits in memory
whole. Duration is what decoding yields, never what a header claims.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import IO

import fsspec
import numpy as np
import soundfile as sf
import soxr

from processors.errors import (
    CorruptAudio,
    EmptyAudio,
    NonFiniteAudio,
    TruncatedAudio,
    UndecodableAudio,
    UnreadableInput,
)

TARGET_SR = 16000
BLOCK_S = 20.0
# Header frame counts of these containers are exact; a shortfall when decoding means a truncated file.
_EXACT_LENGTH_FORMATS = {"WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64"}
_TRUNCATION_TOLERANCE = 0.01


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


@contextlib.contextmanager
def open_input(uri: str) -> Iterator[IO[bytes] | str]:
    """Open ``uri`` for decoding: a local path as-is, anything else as a seekable fsspec file."""
    if is_local(uri):
        path = local_path(uri)
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise UnreadableInput(f"{type(e).__name__}: {e.strerror or e}") from None
        if not os.path.isfile(path):
            raise UnreadableInput("not a regular file")
        yield path
        return
    try:
        f = fsspec.open(uri, "rb").open()
    except (OSError, ValueError) as e:
        raise UnreadableInput(f"{type(e).__name__}: {e}") from None
    with f:
        yield f


def iter_standardised(
    uri: str, start_s: float = 0.0, end_s: float | None = None, block_s: float = BLOCK_S
) -> Iterator[np.ndarray]:
    """Yield 16 kHz mono float32 blocks of ``uri`` between ``start_s`` and ``end_s`` (seconds).

    Raises a ``MediaError`` subclass for unreadable, undecodable, truncated or non-finite input.
    """
    with open_input(uri) as src:
        try:
            sfile = sf.SoundFile(src)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
            sfile = None
        if sfile is None:
            yield from _iter_ffmpeg(uri, start_s, end_s, block_s)
            return
        with sfile:
            yield from _iter_soundfile(sfile, start_s, end_s, block_s)


def _iter_soundfile(
    f: sf.SoundFile, start_s: float, end_s: float | None, block_s: float
) -> Iterator[np.ndarray]:
    sr = f.samplerate
    if sr <= 0:
        raise UndecodableAudio(f"invalid sample rate {sr}")
    first = int(round(start_s * sr))
    last = None if end_s is None else int(round(end_s * sr))
    if first:
        try:
            f.seek(first)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise UndecodableAudio(f"seek failed: {e}") from None
    resampler = soxr.ResampleStream(sr, TARGET_SR, 1, dtype="float32", quality="HQ")
    block = max(1, int(block_s * sr))
    pos, produced = first, 0
    while last is None or pos < last:
        n = block if last is None else min(block, last - pos)
        try:
            data = f.read(n, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise CorruptAudio(f"decoding failed at frame {pos} of {f.frames}: {e}") from None
        if len(data) == 0:
            break
        pos += len(data)
        mono = _to_mono(data)
        out = resampler.resample_chunk(mono, last=False)
        produced += len(out)
        if len(out):
            yield out
    tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
    if len(tail):
        produced += len(tail)
        yield tail
    if start_s == 0.0 and end_s is None:
        _check_complete(f, pos)
    if produced == 0 and (last is None or last > first):
        raise EmptyAudio("no samples decoded")


def _check_complete(f: sf.SoundFile, frames_read: int) -> None:
    if f.format in _EXACT_LENGTH_FORMATS and f.frames > 0:
        if frames_read < f.frames * (1 - _TRUNCATION_TOLERANCE):
            raise TruncatedAudio(f"header says {f.frames} frames, decoded {frames_read}")


def _to_mono(data: np.ndarray) -> np.ndarray:
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise NonFiniteAudio("NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _iter_ffmpeg(uri: str, start_s: float, end_s: float | None, block_s: float) -> Iterator[np.ndarray]:
    """Decode through ffmpeg (formats libsndfile lacks, e.g. m4a); output is already 16 kHz mono."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UndecodableAudio("libsndfile cannot read it and ffmpeg is not installed (apt-get install ffmpeg)")
    with _ffmpeg_input(uri) as path:
        cmd = [ffmpeg, "-nostdin", "-hide_banner", "-v", "error"]
        if start_s:
            cmd += ["-ss", f"{start_s:.6f}"]
        if end_s is not None:
            cmd += ["-t", f"{end_s - start_s:.6f}"]
        cmd += ["-i", path, "-vn", "-f", "f32le", "-ac", "1", "-ar", str(TARGET_SR), "-"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        produced = 0
        try:
            block_bytes = int(block_s * TARGET_SR) * 4
            while True:
                buf = proc.stdout.read(block_bytes)
                if not buf:
                    break
                usable = len(buf) - len(buf) % 4
                x = np.frombuffer(buf[:usable], dtype=np.float32).copy()
                if not np.isfinite(x).all():
                    raise NonFiniteAudio("NaN or infinite samples")
                produced += len(x)
                yield x
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
            rc = proc.wait()
        if rc != 0:
            raise UndecodableAudio(f"ffmpeg failed: {err.splitlines()[-1] if err else rc}")
        if produced == 0:
            raise EmptyAudio("no samples decoded")


@contextlib.contextmanager
def _ffmpeg_input(uri: str) -> Iterator[str]:
    if is_local(uri):
        yield local_path(uri)
        return
    suffix = os.path.splitext(uri)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with fsspec.open(uri, "rb") as src:
            shutil.copyfileobj(src, tmp)
        tmp.flush()
        yield tmp.name


def load_standardised(uri: str, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """The whole range as one array. For bounded ranges (one chunk), not whole long files."""
    blocks = list(iter_standardised(uri, start_s, end_s))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] → int16, the sample format stored in FLAC and hashed for exact dedup."""
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


def encode_flac(x: np.ndarray, sample_rate: int = TARGET_SR) -> bytes:
    """Encode float32 mono to 16-bit FLAC bytes (deterministic for the same samples)."""
    buf = io.BytesIO()
    sf.write(buf, to_pcm16(x), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    x, sr = sf.read(io.BytesIO(data), dtype="float32")
    return x, sr
