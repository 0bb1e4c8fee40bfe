import numpy as np

from processors.segment import SegmentParams, cut_chunk, plan_chunk, split_at_low_energy
from schemas.input import InputItem
from schemas.labels import Transcript
from processors.vad import SileroVad
from tests.factories import chord_music, silence, tts

VAD = None


def _vad():
    global VAD
    VAD = VAD or SileroVad()
    return VAD


def _item(**kw):
    return InputItem.local("/x.wav", corpus="c", license="CC0-1.0", split="train", **kw)


def test_transcript_stays_only_on_a_segment_covering_the_whole_utterance():
    short = np.concatenate([silence(0.5), tts("A short utterance with a transcript."), silence(0.5)])
    plans = plan_chunk(short, _vad().probs(short), _item(text="a short utterance with a transcript"), True,
                       SegmentParams())
    [(seg, flac)] = cut_chunk(short, plans, _item(text="a short utterance with a transcript", language="en"), "ab", 0.0)
    assert seg.labels.transcript == Transcript(text="a short utterance with a transcript", language="en", by="manifest")
    sentence = tts("This sentence repeats until the recording is far longer than thirty seconds.")
    long = np.concatenate([np.concatenate([sentence, silence(0.6)])] * 8)
    item = _item(text="the whole long transcript")
    segs = cut_chunk(long, plan_chunk(long, _vad().probs(long), item, True, SegmentParams()), item, "ab", 0.0)
    assert len(segs) >= 2 and all(s.duration_s <= 30.0 for s, _ in segs)
    assert all(s.labels.transcript is None for s, _ in segs)


def test_music_is_cut_at_quiet_points_into_windows_of_at_most_30s():
    x = chord_music(70.0, seed=4)
    item = _item(kind="music")
    segs = cut_chunk(x, plan_chunk(x, _vad().probs(x), item, True, SegmentParams()), item, "ab", 100.0)
    assert len(segs) >= 3 and {s.kind for s, _ in segs} == {"music"}
    assert all(s.duration_s <= 30.0 for s, _ in segs)
    assert segs[0][0].start_s >= 100.0 and segs[-1][0].end_s <= 170.0 + 1e-6   # source-file times
    assert len({s.id for s, _ in segs}) == len(segs)


def test_split_at_low_energy_prefers_the_quietest_frame():
    energy = np.ones(1000)
    energy[700] = 0.0
    assert split_at_low_energy(0, 160 * 1000, energy, max_len=160 * 800) == [(0, 160 * 700), (160 * 700, 160 * 1000)]
