import numpy as np
import pytest
import soundfile as sf

from processors.audio import iter_standardised, to_pcm16
from processors.dedup import DedupItem, SpectralVerifier, Fingerprinter, PcmHasher, find_duplicates

VERIFY = SpectralVerifier(lambda uri: iter_standardised(uri))
from tests.factories import ffmpeg, tts, write


def _item(path, rank):
    fp, h = Fingerprinter(), PcmHasher()
    for block in iter_standardised(str(path), block_s=1.1):
        fp.update(block)
        h.update(to_pcm16(block))
    return DedupItem(str(path), h.hexdigest(), fp.finish(), (rank,))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("dedup")
    a = tts("The quick brown fox jumps over the lazy dog while the band plays by the river.")
    b = tts("Weather patterns in the mountains change quickly during the early spring months.", "en-us+f2")
    c = tts("The quick brown fox jumps over the lazy dog while the band plays by the river.", "en-us+f3")
    files = {
        "a": write(d / "a.wav", a),
        "b": write(d / "b.wav", b),
        "same_voice_other_take": write(d / "c.wav", c),   # same words, other voice: not a duplicate
        # the same 16-bit samples in another container: an exact duplicate
        "copy": write(d / "copy.flac", sf.read(d / "a.wav", dtype="int16")[0]),
        "gain": write(d / "gain.wav", a * 0.4),
        "trimmed": write(d / "trim.wav", a[8000:-4000]),
        "resampled": write(d / "res.wav", np.interp(np.arange(0, len(a), 16000 / 22050), np.arange(len(a)), a), sr=22050),
    }
    files["mp3"] = ffmpeg(files["a"], d / "a.mp3", "-b:a", "48k")
    return files


def test_exact_and_near_duplicates_are_found_and_the_first_ranked_kept(corpus):
    names = ["a", "b", "same_voice_other_take", "copy", "gain", "trimmed", "resampled", "mp3"]
    items = [_item(corpus[n], i) for i, n in enumerate(names)]
    dups = find_duplicates(items, verify=VERIFY)
    a = str(corpus["a"])
    assert dups[str(corpus["copy"])] == (a, "exact")
    for n in ["gain", "trimmed", "resampled", "mp3"]:
        assert dups[str(corpus[n])] == (a, "near"), n
    assert str(corpus["b"]) not in dups and str(corpus["same_voice_other_take"]) not in dups and a not in dups


def test_keeper_choice_is_deterministic(corpus):
    items = [_item(corpus[n], r) for r, n in [(1, "a"), (0, "mp3")]]
    assert find_duplicates(items) == {str(corpus["a"]): (str(corpus["mp3"]), "near")}
    assert find_duplicates(list(reversed(items))) == find_duplicates(items)


def test_fingerprint_is_independent_of_block_size(corpus):
    x = np.concatenate(list(iter_standardised(str(corpus["a"]))))
    prints = []
    for block in (1000, 7777, len(x)):
        fp = Fingerprinter()
        for i in range(0, len(x), block):
            fp.update(x[i:i + block])
        prints.append(fp.finish())
    assert len(prints[0]) > 50
    assert all(np.array_equal(prints[0], p) for p in prints[1:])


def test_template_sentences_sharing_most_audio_are_not_duplicates(tmp_path):
    """TTS renders shared words sample-identically; only the differing word tells them apart."""
    texts = ["Please turn on the kitchen lights now.", "Please turn on the bedroom lights now."]
    texts += [f"Cluster test sentence {i} for the job." for i in range(6)]
    items = [_item(write(tmp_path / f"t{i}.wav", np.concatenate([tts(t), np.zeros(8000, np.float32)])), i)
             for i, t in enumerate(texts)]
    assert find_duplicates(items, verify=VERIFY) == {}


@pytest.mark.parametrize("offset", [777, 3333, 5000, 8000, 12345])
def test_trims_at_any_sample_offset_are_found(corpus, tmp_path, offset):
    x = sf.read(corpus["a"], dtype="float32")[0]
    trimmed = write(tmp_path / "t.wav", x[offset:-1234])
    dups = find_duplicates([_item(corpus["a"], 0), _item(trimmed, 1)], verify=VERIFY)
    assert dups == {str(trimmed): (str(corpus["a"]), "near")}
