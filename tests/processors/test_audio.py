import numpy as np
import pytest

from processors.audio import decode_flac, encode_flac, iter_standardised, load_standardised, to_pcm16
from processors.errors import CorruptAudio, EmptyAudio, NonFiniteAudio, TruncatedAudio, UndecodableAudio, UnreadableInput
from tests.factories import ffmpeg, tone, tts, write


@pytest.fixture(scope="module")
def speech():
    return tts("Testing the decoder with a short sentence.")


@pytest.mark.parametrize("ext,args", [("flac", []), ("ogg", ["-c:a", "libvorbis"]), ("opus", ["-c:a", "libopus"]),
                                      ("mp3", []), ("m4a", ["-c:a", "aac"])])
def test_every_container_decodes_to_16k_mono_with_the_same_duration(tmp_path, speech, ext, args):
    src = write(tmp_path / "s.wav", speech)
    x = load_standardised(str(ffmpeg(src, tmp_path / f"s.{ext}", *args)))
    assert x.dtype == np.float32 and x.ndim == 1
    # Lossy codecs add encoder delay/padding: tens of ms at most.
    assert abs(len(x) - len(speech)) / 16000 < 0.06
    assert _aligned_correlation(x, speech) > 0.9


def _aligned_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 2000) -> float:
    """Peak normalised correlation over lags up to ``max_lag`` samples (codec delay)."""
    n = min(len(a), len(b))
    best = 0.0
    for lag in range(-max_lag, max_lag + 1, 1):
        x, y = (a[lag:n], b[: n - lag]) if lag >= 0 else (a[: n + lag], b[-lag:n])
        best = max(best, float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9)))
    return best


def test_resamples_and_downmixes(tmp_path):
    stereo = np.stack([tone(2.0, 1000, sr=44100), tone(2.0, 1000, sr=44100)], axis=1)
    x = load_standardised(str(write(tmp_path / "a.wav", stereo, sr=44100)))
    assert len(x) == 32000
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 16000 / len(x) - 1000) < 2


def test_192k_and_8_channels(tmp_path):
    multi = np.tile(tone(1.0, 300, sr=192000)[:, None], (1, 8))
    x = load_standardised(str(write(tmp_path / "m.wav", multi, sr=192000, subtype="PCM_24")))
    assert len(x) == 16000
    assert 0.25 < np.abs(x).max() < 0.35


def test_streaming_blocks_equal_whole_decode(tmp_path, speech):
    path = str(write(tmp_path / "s.wav", np.tile(speech, 3), sr=16000))
    blocks = list(iter_standardised(path, block_s=0.7))
    assert len(blocks) > 3
    assert np.allclose(np.concatenate(blocks), load_standardised(path), atol=1e-6)


def test_range_decode(tmp_path):
    x = np.arange(48000, dtype=np.float32) / 48000
    path = str(write(tmp_path / "r.wav", x, subtype="FLOAT"))
    part = load_standardised(path, 1.0, 2.0)
    assert len(part) == 16000 and abs(part[0] - 1 / 3) < 1e-3


def test_bad_media_raise_typed_errors(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "text.mp3").write_text("this is not audio at all\n" * 50)
    (tmp_path / "rand.wav").write_bytes(np.random.default_rng(0).bytes(8000))
    nan = tone(1.0)
    nan[100] = np.nan
    write(tmp_path / "nan.wav", nan, subtype="FLOAT")
    flac = write(tmp_path / "full.flac", tone(5.0, 200))
    data = flac.read_bytes()
    (tmp_path / "trunc.flac").write_bytes(data[: len(data) // 2])
    expect = {"zero.wav": (UndecodableAudio, EmptyAudio), "text.mp3": UndecodableAudio,
              "rand.wav": UndecodableAudio, "nan.wav": NonFiniteAudio, "trunc.flac": (TruncatedAudio, CorruptAudio)}
    for name, err in expect.items():
        with pytest.raises(err):
            load_standardised(str(tmp_path / name))
    with pytest.raises(UnreadableInput):
        load_standardised(str(tmp_path / "missing.wav"))


def test_flac_round_trip_is_exact_at_16_bits():
    x = tone(1.0)
    y, sr = decode_flac(encode_flac(x))
    assert sr == 16000
    assert np.array_equal(to_pcm16(y), to_pcm16(x))
    assert encode_flac(x) == encode_flac(x)


def test_a_stalled_ffmpeg_is_stopped(tmp_path):
    import os

    from processors.audio import DecodeInfo, DecodeLimits, _iter_ffmpeg

    fifo = tmp_path / "never-written.m4a"
    os.mkfifo(fifo)                      # ffmpeg blocks opening it: no writer ever comes
    with pytest.raises(UndecodableAudio, match="no progress for 1.5 s"):
        list(_iter_ffmpeg(str(fifo), 0.0, None, 1.0, DecodeLimits(stall_timeout_s=1.5), DecodeInfo()))


def test_only_regular_files_are_opened(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(UnreadableInput, match="named pipe"):
        load_standardised(str(tmp_path / "pipe.wav"))
    with pytest.raises(UnreadableInput, match="a device"):
        load_standardised("/dev/zero")


def test_espeak_text_is_never_an_option():
    from processors.tts import espeak

    assert len(espeak("-s 400 this text starts with a dash")) > 16000
