import numpy as np

from processors.measure import bandwidth_hz, lufs, measure, snr_db
from tests.factories import tone


def test_peak_and_clipping():
    x = tone(1.0, amp=1.2).clip(-1, 1)
    m = measure(x)
    assert m["peak"] == 1.0 and 0.2 < m["clipping_ratio"] < 0.6
    assert measure(tone(1.0, amp=0.5))["clipping_ratio"] == 0.0


def test_loudness_follows_gain():
    x = tone(3.0, 1000, 0.5)
    assert abs((lufs(x) - lufs(x * 0.5)) - 6.02) < 0.1
    assert lufs(x[:1000]) is None


def test_snr_separates_clean_from_noisy():
    rng = np.random.default_rng(0)
    bursts = np.concatenate([tone(0.5, 500, 0.5), np.zeros(8000, np.float32)] * 4)
    clean = bursts + rng.normal(0, 1e-4, len(bursts))
    noisy = bursts + rng.normal(0, 0.05, len(bursts))
    assert snr_db(clean) > snr_db(noisy) + 20


def test_bandwidth_sees_a_lowpass():
    rng = np.random.default_rng(0)
    white = rng.normal(0, 0.1, 32000).astype(np.float32)
    spec = np.fft.rfft(white)
    spec[int(len(spec) * 4000 / 8000):] = 0
    low = np.fft.irfft(spec, len(white)).astype(np.float32)
    assert bandwidth_hz(white) > 7500
    assert 3500 < bandwidth_hz(low) < 4600
