import numpy as np

from processors.fingerprint import MAX_DT, Fingerprinter, PcmHasher, variants
from tests.factories import chord_music, silence, tts


def _sequential_pairs(peaks: np.ndarray, fan_out: int = 5) -> list[tuple[int, int]]:
    """The pairing rule written the plain way: each peak, its next fan_out partners with 1 ≤ dt ≤ 63
    frames and |df| ≤ 63 bins (hash before subsampling, anchor frame)."""
    out = []
    for i, (t1, f1) in enumerate(peaks.tolist()):
        found = 0
        for t2, f2 in peaks[i + 1:].tolist():
            dt = t2 - t1
            if dt > MAX_DT:
                break
            if dt < 1 or abs(f2 - f1) > 63:
                continue
            out.append(((f1 << 14) | ((f2 - f1 + 63) << 6) | dt, t1))
            found += 1
            if found == fan_out:
                break
    return out


def test_vectorised_pairing_equals_the_plain_rule():
    from processors.fingerprint import keep_hash

    x = np.concatenate([tts("Pairs of peaks make the hashes of a landmark fingerprint."), silence(0.3),
                        chord_music(6.0, seed=2)])
    fp = Fingerprinter()
    fp._pair = lambda final: None          # keep every peak, to pair them the plain way
    fp.update(x)
    fp._pick_peaks(final=True)
    peaks = fp._peaks.copy()
    expected = [(h, t) for h, t in _sequential_pairs(peaks) if keep_hash(np.array([h]))[0]]
    got = Fingerprinter()
    got.update(x)
    assert [tuple(r) for r in got.finish().tolist()] == expected and len(expected) > 50


def test_fingerprint_is_independent_of_block_size(tmp_path):
    x = np.concatenate([tts("The quick brown fox jumps over the lazy dog."), chord_music(5.0)])
    prints = []
    for block in (1000, 7777, len(x)):
        fp = Fingerprinter()
        for i in range(0, len(x), block):
            fp.update(x[i:i + block])
        prints.append(fp.finish())
    assert len(prints[0]) > 50
    assert all(np.array_equal(prints[0], p) for p in prints[1:])


def test_pcm_hash_is_of_the_samples_not_the_blocks():
    x = (np.random.default_rng(0).normal(0, 3000, 48000)).astype(np.int16)
    a, b = PcmHasher(), PcmHasher()
    a.update(x)
    for i in range(0, len(x), 999):
        b.update(x[i:i + 999])
    assert a.hexdigest() == b.hexdigest()


def test_variants_cover_dt_plus_minus_one_within_range():
    h = np.array([(5 << 14) | (70 << 6) | 1, (5 << 14) | (70 << 6) | 30, (5 << 14) | (70 << 6) | 63])
    v = variants(h)
    assert (v[0] == [-1, h[0], h[0] + 1]).all()
    assert (v[1] == [h[1] - 1, h[1], h[1] + 1]).all()
    assert (v[2] == [h[2] - 1, h[2], -1]).all()
