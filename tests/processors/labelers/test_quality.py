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
