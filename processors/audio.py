"""Decode and standardise audio: any input → 16 kHz mono float32, streamed in bounded blocks.

libsndfile (through soundfile) reads WAV, FLAC, Ogg Vorbis/Opus and MP3; anything it cannot read goes
through Debian's ffmpeg. Resampling is soxr's streaming resampler, so a 3-hour file never sits in memory
whole. Duration is what decoding yields, never what a header claims; a WAV header that disagrees with the
file's size is a reject, not a silent cut.

Only regular files are opened (a named pipe or a device would block or never end), and ffmpeg runs with
both output streams drained, local protocols only, and a stall timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO

import fsspec
import numpy as np
import soundfile as sf
import soxr

from processors.errors import (
    BadChannels,
    BadSampleRate,
    CorruptAudio,
    EmptyAudio,
    HeaderMismatch,
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
_LOSSLESS_SUBTYPES = {"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE",
                      "ALAC_16", "ALAC_20", "ALAC_24", "ALAC_32"}
_LOSSLESS_FFMPEG_CODECS = ("flac", "alac", "pcm_", "wavpack", "ape", "tta", "mlp", "truehd")


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """Plausibility limits on what a decoder reports, and the ffmpeg stall timeout."""

    min_sample_rate: int = 4000
    max_sample_rate: int = 768000
    max_channels: int = 256
    stall_timeout_s: float = 60.0


MAX_BLOCK_SAMPLES = 1 << 22     # one read holds at most this many samples (16 MB), whatever the channels


@dataclasses.dataclass
class DecodeInfo:
    """What the decoder says about the source: filled in when decoding starts."""

    codec: str = ""
    sample_rate: int = 0
    lossless: bool = False


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def check_regular_file(path: str) -> os.stat_result:
    """Stat without opening: a missing file, a directory, a named pipe or a device is unreadable."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UnreadableInput(f"{type(e).__name__}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a named pipe" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket"
                if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise UnreadableInput(f"not a regular file ({kind})")
    return st


@contextlib.contextmanager
def open_input(uri: str) -> Iterator[IO[bytes] | str]:
    """Open ``uri`` for decoding: a local regular file as its path, anything else as a seekable fsspec file."""
    if is_local(uri):
        path = local_path(uri)
        check_regular_file(path)
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise UnreadableInput(f"{type(e).__name__}: {e.strerror or e}") from None
        yield path
        return
    try:
        f = fsspec.open(uri, "rb").open()
    except (OSError, ValueError) as e:
        raise UnreadableInput(f"{type(e).__name__}: {e}") from None
    with f:
        yield f


def iter_standardised(uri: str, start_s: float = 0.0, end_s: float | None = None, block_s: float = BLOCK_S,
                      limits: DecodeLimits = DecodeLimits(), info: DecodeInfo | None = None) -> Iterator[np.ndarray]:
    """Yield 16 kHz mono float32 blocks of ``uri`` between ``start_s`` and ``end_s`` (seconds).

    Raises a ``MediaError`` subclass for unreadable, undecodable, truncated, implausible or non-finite
    input. ``info``, when given, is filled in with the codec and native sample rate once decoding starts.
    """
    info = info if info is not None else DecodeInfo()
    with open_input(uri) as src:
        try:
            sfile = sf.SoundFile(src)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
            sfile = None
        if sfile is None:
            yield from _iter_ffmpeg(uri, start_s, end_s, block_s, limits, info)
            return
        with sfile:
            info.codec = f"{sfile.format}/{sfile.subtype}"
            info.sample_rate = sfile.samplerate
            info.lossless = sfile.subtype in _LOSSLESS_SUBTYPES
            _check_rate(sfile.samplerate, limits)
            if not 1 <= sfile.channels <= limits.max_channels:
                raise BadChannels(f"{sfile.channels} channels (audio.max_channels {limits.max_channels})")
            if start_s == 0.0 and end_s is None and sfile.format in ("WAV", "WAVEX") and isinstance(src, str):
                check_wav_header(src, sfile.samplerate, sfile.channels)
            yield from _iter_soundfile(sfile, start_s, end_s, block_s)


def _check_rate(sr: int, limits: DecodeLimits) -> None:
    if not limits.min_sample_rate <= sr <= limits.max_sample_rate:
        raise BadSampleRate(f"sample rate {sr} Hz is outside {limits.min_sample_rate}–{limits.max_sample_rate} Hz "
                            "(audio.min_sample_rate, audio.max_sample_rate)")


def check_wav_header(path: str, sample_rate: int, channels: int) -> None:
    """Compare a RIFF/WAVE header's data size with the file: a header that claims more data than the file
    holds is truncation; one that claims less, with unparseable data after it, hides audio."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        size = os.fstat(f.fileno()).st_size
        pos = 12
        for _ in range(4096):
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                return _check_data_chunk(f, pos + 8, csize, size, sample_rate, channels)
            pos += 8 + csize + (csize & 1)


def _check_data_chunk(f, start: int, declared: int, size: int, sample_rate: int, channels: int) -> None:
    if declared in (0xFFFFFFFF, 0):       # a stream's placeholder: decoding decides
        return
    available = size - start
    if declared > available + 1:
        raise TruncatedAudio(f"WAV header declares {declared} bytes of audio, the file holds {available}")
    pos = start + declared + (declared & 1)
    while pos + 8 <= size:               # chunks after the audio (LIST, id3, …) are fine
        f.seek(pos)
        cid, csize = struct.unpack("<4sI", f.read(8))
        if not all(32 <= c < 127 for c in cid) or pos + 8 + csize > size:
            break
        pos += 8 + csize + (csize & 1)
    trailing = size - pos
    if trailing > max(4096, declared // 100):
        raise HeaderMismatch(f"WAV header declares {declared} bytes of audio, but {trailing} more bytes of "
                             f"unlabelled data follow it ({sample_rate} Hz, {channels} channel(s))")


def _iter_soundfile(f: sf.SoundFile, start_s: float, end_s: float | None, block_s: float) -> Iterator[np.ndarray]:
    sr = f.samplerate
    first = int(round(start_s * sr))
    last = None if end_s is None else int(round(end_s * sr))
    if first:
        try:
            f.seek(first)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise UndecodableAudio(f"seek failed: {e}") from None
    resampler = soxr.ResampleStream(sr, TARGET_SR, 1, dtype="float32", quality="HQ")
    block = max(1, min(int(block_s * sr), MAX_BLOCK_SAMPLES // f.channels))
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
        out = resampler.resample_chunk(_to_mono(data), last=False)
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


_STREAM_RE = re.compile(r"Audio: ([A-Za-z0-9_]+).*?(\d+) Hz")


class _Drain(threading.Thread):
    """Reads a pipe to its end in the background, keeping the last ``keep`` bytes (ffmpeg's log), so the
    child never blocks on a full stderr pipe while we read its stdout."""

    def __init__(self, pipe, keep: int = 1 << 16):
        super().__init__(daemon=True)
        self.pipe, self.keep, self.data = pipe, keep, bytearray()
        self.head = bytearray()
        self.stream_seen = threading.Event()   # the input's stream line was logged (or the log ended)

    def run(self) -> None:
        try:
            for chunk in iter(lambda: self.pipe.read1(4096), b""):
                if len(self.head) < self.keep:
                    self.head += chunk[: self.keep - len(self.head)]
                    if _STREAM_RE.search(self.head.decode(errors="replace")):
                        self.stream_seen.set()
                self.data += chunk
                del self.data[: max(0, len(self.data) - self.keep)]
        finally:
            self.stream_seen.set()

    def text(self) -> str:
        return self.data.decode(errors="replace")


class _Watchdog(threading.Thread):
    """Kills ``proc`` when ``touch()`` has not been called for ``timeout`` seconds."""

    def __init__(self, proc: subprocess.Popen, timeout: float):
        super().__init__(daemon=True)
        self.proc, self.timeout, self.last = proc, timeout, time.monotonic()
        self.fired = False
        self._stop = threading.Event()

    def touch(self) -> None:
        self.last = time.monotonic()

    def run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            if time.monotonic() - self.last > self.timeout:
                self.fired = True
                self.proc.kill()
                return

    def stop(self) -> None:
        self._stop.set()


def _iter_ffmpeg(uri: str, start_s: float, end_s: float | None, block_s: float, limits: DecodeLimits,
                 info: DecodeInfo) -> Iterator[np.ndarray]:
    """Decode through ffmpeg (formats libsndfile lacks, e.g. m4a); output is already 16 kHz mono."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise UndecodableAudio("libsndfile cannot read it and ffmpeg is not installed (apt-get install ffmpeg)")
    with _ffmpeg_input(uri) as path:
        cmd = [ffmpeg, "-nostdin", "-hide_banner", "-nostats", "-v", "info", "-protocol_whitelist", "file,pipe"]
        if start_s:
            cmd += ["-ss", f"{start_s:.6f}"]
        if end_s is not None:
            cmd += ["-t", f"{end_s - start_s:.6f}"]
        cmd += ["-i", "file:" + path, "-vn", "-f", "f32le", "-ac", "1", "-ar", str(TARGET_SR), "pipe:1"]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        log, watchdog = _Drain(proc.stderr), _Watchdog(proc, limits.stall_timeout_s)
        log.start()
        watchdog.start()
        produced, checked = 0, False
        try:
            block_bytes = int(block_s * TARGET_SR) * 4
            while True:
                buf = proc.stdout.read(block_bytes)
                watchdog.touch()
                if not buf:
                    break
                if not checked:
                    checked = True
                    log.stream_seen.wait(timeout=5.0)
                    _ffmpeg_info(log.head.decode(errors="replace"), info)
                    if info.sample_rate:
                        _check_rate(info.sample_rate, limits)
                usable = len(buf) - len(buf) % 4
                x = np.frombuffer(buf[:usable], dtype=np.float32).copy()
                if not np.isfinite(x).all():
                    raise NonFiniteAudio("NaN or infinite samples")
                produced += len(x)
                yield x
        finally:
            watchdog.stop()
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            rc = proc.wait()
            log.join(timeout=10)
            proc.stderr.close()
        if watchdog.fired:
            raise UndecodableAudio(f"ffmpeg made no progress for {limits.stall_timeout_s:g} s "
                                   "(audio.stall_timeout_s) and was stopped")
        if rc != 0:
            errors = [ln for ln in log.text().splitlines() if ln.strip()]
            raise UndecodableAudio(f"ffmpeg failed: {errors[-1] if errors else rc}"[:300])
        if produced == 0:
            raise EmptyAudio("no samples decoded")


def _ffmpeg_info(log: str, info: DecodeInfo) -> None:
    m = _STREAM_RE.search(log)
    codec = m.group(1) if m else "unknown"
    info.codec = f"ffmpeg/{codec}"
    info.sample_rate = int(m.group(2)) if m else 0
    info.lossless = codec.startswith(_LOSSLESS_FFMPEG_CODECS)


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


def estimated_seconds(uri: str, size: int) -> float:
    """A cheap guess of an input's duration, to share work out before decoding: the header's frame count
    for a local file libsndfile reads, else its size at 16 kHz 16-bit mono. Never raises."""
    if is_local(uri):
        try:
            if stat.S_ISREG(os.stat(local_path(uri)).st_mode):
                info = sf.info(local_path(uri))
                if info.samplerate > 0 and info.frames > 0:
                    return min(info.frames / info.samplerate, max(size, 0) / 100 + 60.0)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError):
            pass
    return max(size, 0) / (TARGET_SR * 2)


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
