"""Property: whatever bytes an input holds (random, or a real header with random fields, or a real file
with bytes flipped or cut), the ingest pass gives an accepted unit or a reject with a reason; it never
raises anything else and never hangs."""

import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pipelines.stages.ingest import IngestJob, IngestStage
from processors.ingest import IngestParams
from schemas.input import InputItem
from tests.factories import ffmpeg, tone, tts, write

SETTINGS = settings(max_examples=40, deadline=20_000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow], derandomize=True)


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    s = IngestStage()
    s.params = IngestJob(IngestParams(), str(tmp_path_factory.mktemp("work")))
    s.setup()
    return s


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    x = np.concatenate([tts("Flip some bytes in me.", "en-us"), tone(0.5)])
    wav = write(d / "a.wav", x)
    files = {"wav": wav.read_bytes(), "flac": write(d / "a.flac", x).read_bytes()}
    for ext, args in [("mp3", []), ("ogg", ["-c:a", "libvorbis"]), ("m4a", ["-c:a", "aac"])]:
        files[ext] = ffmpeg(wav, d / f"a.{ext}", *args).read_bytes()
    return files


def _ingest(stage, data: bytes, ext: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x.{ext}"
        path.write_bytes(data)
        item = InputItem.local(str(path), corpus="fuzz", license="x", split="train", size=len(data))
        t = time.monotonic()
        result = stage.one(item)
        assert time.monotonic() - t < 15, "ingest took too long"
    assert result.unit == item.unit
    if result.reject is None:
        assert result.segment_count and result.duration_s > 0 and not result.segments     # they stay in the marker
    else:
        assert result.reject.reason and result.reject.reason != "bad_media"
    return result


@SETTINGS
@given(data=st.binary(max_size=6000), ext=st.sampled_from(["wav", "flac", "mp3", "ogg", "m4a", "opus"]))
def test_random_bytes(stage, data, ext):
    _ingest(stage, data, ext)


def _wav(fmt, channels, rate, bits, declared, payload) -> bytes:
    block = max(1, channels * max(1, bits // 8))
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * block & 0xFFFFFFFF, block & 0xFFFF, bits)
    return (b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk
            + b"data" + struct.pack("<I", declared) + payload)


@SETTINGS
@given(fmt=st.sampled_from([1, 3, 6, 7, 0xFFFE, 0, 2]), channels=st.integers(0, 65535),
       rate=st.sampled_from([0, 1, 8, 4000, 16000, 44100, 768000, 2**31, 2**32 - 1]),
       bits=st.sampled_from([0, 1, 8, 16, 24, 32, 64, 65535]), declared=st.integers(0, 2**32 - 1),
       payload=st.binary(max_size=8000))
def test_wav_headers_with_random_fields(stage, fmt, channels, rate, bits, declared, payload):
    _ingest(stage, _wav(fmt, channels, rate, bits, declared, payload), "wav")


@SETTINGS
@given(kind=st.sampled_from(["flac", "ogg", "mp3"]), head=st.binary(min_size=0, max_size=64),
       payload=st.binary(max_size=6000))
def test_other_containers_with_random_headers(stage, kind, head, payload):
    magic = {"flac": b"fLaC\x00\x00\x00\x22", "ogg": b"OggS\x00\x02", "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00"}[kind]
    _ingest(stage, magic + head + payload, kind)


@SETTINGS
@given(ext=st.sampled_from(["wav", "flac", "mp3", "ogg", "m4a"]), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=40))
def test_real_files_cut_and_flipped(stage, real_files, ext, cut, flips):
    data = bytearray(real_files[ext][: max(1, int(len(real_files[ext]) * cut))])
    for where, value in flips:
        data[min(len(data) - 1, int(where * len(data)))] = value
    _ingest(stage, bytes(data), ext)


def test_the_untouched_real_files_are_accepted(stage, real_files):
    for ext, data in real_files.items():
        assert _ingest(stage, data, ext).reject is None, ext
