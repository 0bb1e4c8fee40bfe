import numpy as np
import pytest

from processors.vad import FRAME, VadParams, merge_gaps, pad_regions, plan_speech, speech_regions, split_long
from tests.factories import SR, silence, tone, tts


def test_hysteresis_regions():
    p = np.array([0, .9, .9, .4, .9, .1, .1, .1, .8, .8, 0, 0])
    assert speech_regions(p, .5, .35, min_speech=2, min_silence=2) == [(1, 5), (8, 10)]
    assert speech_regions(p, .5, .35, min_speech=3, min_silence=2) == [(1, 5)]
    assert speech_regions(np.full(5, .9), .5, .35, 1, 1) == [(0, 5)]


def test_merge_and_pad():
    assert merge_gaps([(0, 5), (6, 9), (20, 25)], max_gap=2) == [(0, 9), (20, 25)]
    # Padding never crosses the midpoint to a neighbour, nor the ends.
    assert pad_regions([(2, 5), (7, 10)], pad=3, n_frames=11) == [(0, 6), (6, 11)]


def test_split_long_cuts_at_the_longest_pause():
    p = np.full(100, 0.9)
    p[30:33] = 0.1          # short pause
    p[60:70] = 0.05         # long pause: the cut goes in its middle
    pieces = split_long((0, 100), p, max_len=80, min_piece=10)
    assert pieces == [(0, 65), (65, 100)]
    long_flat = split_long((0, 1000), np.full(1000, .9), max_len=300, min_piece=50)
    assert all(e - s <= 300 for s, e in long_flat) and long_flat[0][0] == 0 and long_flat[-1][1] == 1000


def test_plan_speech_never_exceeds_max_segment():
    rng = np.random.default_rng(0)
    p = np.clip(rng.normal(0.8, 0.3, 5000), 0, 1)   # 160 s of mostly speech with ragged pauses
    params = VadParams(max_segment_s=30.0, pad_s=0.2)
    regions = plan_speech(p, params)
    assert regions and max(e - s for s, e in regions) * FRAME / SR <= 30.0
    assert all(b[0] >= a[1] for a, b in zip(regions, regions[1:]))


@pytest.fixture(scope="module")
def vad():
    from processors.vad import SileroVad

    return SileroVad()


def test_silero_finds_tts_speech_between_silences(vad):
    speech = tts("The weather is lovely today and we will walk to the market.")
    x = np.concatenate([silence(2.0), speech, silence(2.0), tone(2.0, 300, 0.01)])
    probs = vad.probs(x)
    assert len(probs) == -(-len(x) // FRAME)
    regions = plan_speech(probs, VadParams())
    assert len(regions) == 1
    start_s, end_s = regions[0][0] * FRAME / SR, regions[0][1] * FRAME / SR
    assert abs(start_s - 2.0) < 0.4 and abs(end_s - (2.0 + len(speech) / SR)) < 0.5


def test_probabilities_match_the_silero_package_exactly(vad):
    from silero_vad import load_silero_vad

    x = np.concatenate([silence(0.3), tts("Compare with the reference implementation."), tone(0.7, 200, 0.1)])
    reference = load_silero_vad(sequence=True).audio_forward(x, sampling_rate=SR)
    assert np.array_equal(vad.probs(x), np.asarray(reference, np.float32))
    assert vad.probs(np.zeros(0, np.float32)).shape == (0,)
