"""The single decode pass over one input: chunking at quiet points, what it learns, what it writes."""

import io

import numpy as np
import pytest

from processors.errors import DurationMismatch, SilentAudio, TooShort
from processors.ingest import ENERGY_HOP, Chunker, IngestParams, LevelMeter, ingest
from processors.shards import TarSink, read_sample
from processors.vad import SileroVad
from schemas.input import InputItem
from schemas.segment import Segment
from tests.factories import chord_music, ffmpeg, silence, tone, tts, write


@pytest.fixture(scope="module")
def vad():
    return SileroVad()


def _chunks(x, block, chunk_s=10.0, search_s=3.0):
    c = Chunker(chunk_s, search_s)
    out = []
    for i in range(0, len(x), block):
        out += list(c.push(x[i:i + block]))
    return out + list(c.finish())


def test_chunks_are_cut_at_the_quietest_frame_and_do_not_depend_on_blocks():
    x = np.full(16000 * 35, 0.3, np.float32)
    quiet = [int(8.3 * 16000), int(17.9 * 16000), int(26.0 * 16000)]   # 10 ms of silence in each window
    for q in quiet:
        x[q:q + 160] = 0.0
    chunks = _chunks(x, 7777)
    assert [start for start, _ in chunks] == [0] + quiet
    assert all(len(c) <= 10 * 16000 for _, c in chunks)
    assert np.array_equal(np.concatenate([c for _, c in chunks]), x)
    for block in (16000, 16000 * 40):
        assert [(s, len(c)) for s, c in _chunks(x, block)] == [(s, len(c)) for s, c in chunks]


def test_a_short_stream_is_one_chunk():
    x = tone(3.0)
    c = Chunker(10.0, 3.0)
    assert list(c.push(x)) == [] and [len(v) for _, v in c.finish()] == [len(x)] and c.emitted == 1


def test_level_meter_reads_active_level():
    m = LevelMeter()
    m.update(np.concatenate([tone(1.0, amp=0.1 * np.sqrt(2)), silence(3.0)]))   # RMS 0.1 → -20 dBFS
    assert m.dbfs() == pytest.approx(-20.0, abs=0.1)


def _ingest(path, vad, **fields):
    item = InputItem.local(str(path), corpus="c", license="CC0-1.0", split="train", **fields)
    buf = io.BytesIO()
    sink = TarSink(buf)
    result = ingest(item, IngestParams(), vad, sink)
    sink.close()
    return result, buf


def test_what_one_pass_learns_and_writes(tmp_path, vad):
    speech = np.concatenate([silence(0.4), tts("One decode pass learns everything about this input."), silence(0.4)])
    path = write(tmp_path / "a.wav", np.stack([speech, speech], axis=1), sr=16000, subtype="PCM_24")
    r, buf = _ingest(path, vad, text="one decode pass", language="en")
    assert r.duration_s == pytest.approx(len(speech) / 16000, abs=1e-4)
    assert (r.codec, r.lossless, r.native_sample_rate, r.label_count) == ("WAV/PCM_24", True, 16000, 1)
    assert len(r.fingerprint_array()) > 20 and r.level_dbfs > -40 and r.bandwidth_hz > 3000
    [ref] = r.segments
    assert ref.whole_utterance and ref.labels.transcript.text == "one decode pass"
    key, members = read_sample(io.BytesIO(buf.getvalue()), ref.offset, ref.size)
    seg = Segment.from_json(dict(members)["json"])
    assert key == ref.key == seg.id and seg.labels.quality.peak > 0 and seg.source.sha256 == r.file_sha256
    mp3 = ffmpeg(path, tmp_path / "a.mp3", "-b:a", "64k")
    r2, _ = _ingest(mp3, vad)
    assert not r2.lossless and r2.codec.startswith("MP3") and r2.pcm_sha256 != r.pcm_sha256


def test_labels_of_a_long_input_that_fit_no_segment_are_reported(tmp_path, vad):
    sentence = tts("This sentence repeats until the recording is longer than thirty seconds.")
    path = write(tmp_path / "long.wav", np.concatenate([np.concatenate([sentence, silence(0.6)])] * 9))
    r, _ = _ingest(path, vad, text="the whole long transcript")
    assert len(r.segments) >= 2 and not any(s.labels.transcript for s in r.segments)
    assert [w.split(":")[0] for w in r.warnings] == ["labels_not_placed"]


def test_whole_input_checks(tmp_path, vad):
    with pytest.raises(TooShort):
        _ingest(write(tmp_path / "click.wav", tone(0.05)), vad)
    with pytest.raises(SilentAudio):
        _ingest(write(tmp_path / "quiet.wav", tone(2.0, amp=1e-5)), vad)
    with pytest.raises(DurationMismatch):
        _ingest(write(tmp_path / "m.wav", chord_music(3.0)), vad, duration_s=5.0)


def test_energy_hop_is_10ms():
    assert ENERGY_HOP == 160
