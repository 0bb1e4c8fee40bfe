"""DNSMOS ranks the same speech clean > noisy > very noisy, in the P.835 range."""

import numpy as np

from processors.labelers.quality import DnsMos
from processors.tts import espeak


def test_dnsmos_falls_as_noise_rises():
    m = DnsMos()
    x = np.concatenate([espeak("The committee will meet again next Tuesday to review the budget.", "en-us")] * 2)
    rng = np.random.default_rng(0)
    clean = m.scores(x)
    noisy = m.scores(x + rng.normal(0, 0.05, len(x)).astype(np.float32))
    worst = m.scores(0.3 * x + rng.normal(0, 0.2, len(x)).astype(np.float32))
    assert all(1.0 <= v <= 5.0 for v in clean + noisy + worst)
    assert clean[1] > noisy[1] > worst[1]            # background
    assert clean[2] > noisy[2] > worst[2]            # overall
    assert m.by.startswith("dnsmos@speechmos-")


def test_each_window_is_scored_once_whatever_the_clip_length():
    """A clip is cut into 9.01 s windows, a short one repeated to fill exactly one: the model runs once per
    window (left to speechmos, a 2.23 s clip doubles to 17.8 s and runs nine times)."""
    m = DnsMos()
    calls = []
    run = m.model.onnx_sess.run
    m.model.onnx_sess = type("Counting", (), {"run": lambda self, out, feeds: calls.append(feeds["input_1"].shape) or run(out, feeds)})()
    rng = np.random.default_rng(1)
    for seconds, windows in [(2.23, 1), (0.6, 1), (9.5, 1), (20.0, 2), (25.0, 3)]:
        calls.clear()
        sig, bak, ovrl = m.scores(rng.standard_normal(int(seconds * 16000)).astype(np.float32) * 0.1)
        assert calls == [(1, 144160)] * windows, (seconds, calls)
        assert 1 <= ovrl <= 5
