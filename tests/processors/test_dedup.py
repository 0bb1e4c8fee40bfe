import numpy as np
import pytest
import soundfile as sf

from processors.audio import iter_standardised, to_pcm16
from processors.dedup import DedupItem, NearParams, SpectralVerifier, find_relations, resolve
from processors.fingerprint import Fingerprinter, PcmHasher
from tests.factories import ffmpeg, silence, tts, write

VERIFY = SpectralVerifier(lambda uri, s, e: iter_standardised(uri, s, e))


def _item(path, rank):
    fp, h, n = Fingerprinter(), PcmHasher(), 0
    for block in iter_standardised(str(path), block_s=1.1):
        fp.update(block)
        h.update(to_pcm16(block))
        n += len(block)
    return DedupItem(str(path), h.hexdigest(), fp.finish(), n / 16000, (rank,))


def _dropped(items, relations):
    return {items[d.item].uri: (items[d.kept].uri, d.how) for d in resolve(items, relations).dropped}


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
        "long": write(d / "long.wav", np.concatenate([b, silence(1.0), a, silence(1.0), b[::-1]])),
    }
    files["mp3"] = ffmpeg(files["a"], d / "a.mp3", "-b:a", "48k")
    return files


def test_exact_and_near_duplicates_are_found_and_the_first_ranked_kept(corpus):
    names = ["a", "b", "same_voice_other_take", "copy", "gain", "trimmed", "resampled", "mp3"]
    items = [_item(corpus[n], i) for i, n in enumerate(names)]
    dropped = _dropped(items, find_relations(items, verify=VERIFY))
    a = str(corpus["a"])
    assert dropped[str(corpus["copy"])] == (a, "exact")
    for n in ["gain", "trimmed", "resampled", "mp3"]:
        assert dropped[str(corpus[n])] == (a, "near"), n
    assert set(dropped) == {str(corpus[n]) for n in ["copy", "gain", "trimmed", "resampled", "mp3"]}


def test_offsets_between_copies_are_known(corpus):
    items = [_item(corpus["a"], 0), _item(corpus["trimmed"], 1)]
    [d] = resolve(items, find_relations(items, verify=VERIFY)).dropped
    assert d.item == 1 and d.kept == 0
    assert d.offset_s == pytest.approx(0.5, abs=1e-4)      # trimmed t → a t + 8000 samples, to the sample


def test_a_clip_inside_a_longer_recording_is_contained_not_a_duplicate(corpus):
    items = [_item(corpus["long"], 0), _item(corpus["a"], 1), _item(corpus["b"], 2)]
    relations = find_relations(items, verify=VERIFY)
    decisions = resolve(items, relations)
    assert decisions.dropped == ()
    contained = {(items[r.a].uri, items[r.b].uri): r.offset_s for r in decisions.contained}
    long_ = str(corpus["long"])
    b_len = sf.info(corpus["b"]).duration
    assert contained[(str(corpus["a"]), long_)] == pytest.approx(b_len + 1.0, abs=1e-4)
    assert contained[(str(corpus["b"]), long_)] == pytest.approx(0.0, abs=1e-4)


def test_keeper_choice_follows_rank_whatever_the_order(corpus):
    items = [_item(corpus[n], r) for r, n in [(1, "a"), (0, "mp3")]]
    assert _dropped(items, find_relations(items)) == {str(corpus["a"]): (str(corpus["mp3"]), "near")}
    flipped = list(reversed(items))
    assert _dropped(flipped, find_relations(flipped)) == _dropped(items, find_relations(items))


def test_template_sentences_sharing_most_audio_are_not_duplicates(tmp_path):
    """TTS renders shared words sample-identically; only the differing word tells them apart."""
    texts = ["Please turn on the kitchen lights now.", "Please turn on the bedroom lights now."]
    texts += [f"Cluster test sentence {i} for the job." for i in range(6)]
    items = [_item(write(tmp_path / f"t{i}.wav", np.concatenate([tts(t), np.zeros(8000, np.float32)])), i)
             for i, t in enumerate(texts)]
    relations = find_relations(items, verify=VERIFY)
    assert resolve(items, relations).dropped == () and not [r for r in relations if r.how != "contained"]


@pytest.mark.parametrize("offset", [777, 3333, 5000, 8000, 12345])
def test_trims_at_any_sample_offset_are_found(corpus, tmp_path, offset):
    x = sf.read(corpus["a"], dtype="float32")[0]
    trimmed = write(tmp_path / "t.wav", x[offset:-1234])
    items = [_item(corpus["a"], 0), _item(trimmed, 1)]
    assert _dropped(items, find_relations(items, verify=VERIFY)) == {str(trimmed): (str(corpus["a"]), "near")}


def test_common_hashes_are_not_evidence(tmp_path):
    """A jingle shared by many otherwise different files aligns them at one offset, but does not make them
    copies; with max_hash_items below the number of files sharing it, its hashes are not even looked up."""
    from processors.dedup import _FingerprintIndex

    jingle = tts("Welcome to the morning news.", "en-us+f2")
    items = []
    for i in range(6):
        body = tts(f"Story number {i} is about a different town and its {i + 3} bridges.", "en+m3")
        items.append(_item(write(tmp_path / f"n{i}.wav", np.concatenate([jingle, silence(0.3), body])), i))
    wide, narrow = _FingerprintIndex(items, 64), _FingerprintIndex(items, 3)
    pairs = lambda index: sum(len(index.candidates(i, NearParams())) for i in range(6))  # noqa: E731
    assert pairs(wide) == 15                  # the jingle (and the voice's stock words) align every pair
    assert pairs(narrow) < 15 and len(narrow.common) > len(wide.common)
    assert find_relations(items, NearParams(), verify=VERIFY) == []


@pytest.mark.parametrize("buckets,chunk", [(1, 1 << 22), (7, 1 << 22), (256, 1 << 22), (7, 500)])
def test_candidates_by_hash_bucket_are_the_index_candidates(corpus, tmp_path, buckets, chunk, monkeypatch):
    """Scored bucket by bucket (as the job shuffles them), and a bucket's matches in chunks, the candidates
    are those of the whole index: the same pairs, offsets and order, common hashes left out the same way."""
    from processors import dedup
    from processors.dedup import _FingerprintIndex, bucketed_candidates

    monkeypatch.setattr(dedup, "MATCH_CHUNK", chunk)

    jingle = tts("Welcome to the morning news.", "en-us+f2")
    items = [_item(p, i) for i, p in enumerate(corpus.values())]
    for i in range(4):
        body = tts(f"Story number {i} is about a town and its {i + 3} bridges.", "en+m3")
        items.append(_item(write(tmp_path / f"n{i}.wav", np.concatenate([jingle, silence(0.3), body])), 10 + i))
    items.append(DedupItem("empty", "0", np.zeros((0, 2), np.int64), 0.0, (99,)))
    pairs = []
    for p in (NearParams(), NearParams(max_hash_items=3, offset_tolerance=3)):
        index = _FingerprintIndex(items, p.max_hash_items)
        expected = {pos: c for pos in range(len(items)) if (c := index.candidates(pos, p))}
        assert bucketed_candidates([it.fingerprint for it in items], p, buckets) == expected
        pairs.append(sum(map(len, expected.values())))
    assert pairs[0] >= 10 and 0 < pairs[1] < pairs[0], pairs


def test_only_pairs_sharing_enough_hashes_are_voted_on():
    """Unrelated 10-minute fingerprints share hundreds of hashes by chance, spread over every offset: the
    share pass drops those pairs before any vote, and keeps a copy's pair."""
    from processors.dedup import (HASH_COLUMNS, bucket_votes, hash_rows, pair_candidates, pair_key, pair_shares,
                                  surviving_pairs)
    from processors.fingerprint import MAX_DF, keep_hash

    rng = np.random.default_rng(3)
    fps = []
    for _ in range(6):
        h = (rng.integers(0, 257, 60000) << 14) | ((rng.integers(-MAX_DF, MAX_DF + 1, 60000) + MAX_DF) << 6) \
            | rng.integers(1, 64, 60000)
        h = h[keep_hash(h)][:12000]
        fps.append(np.stack([h, np.sort(rng.integers(0, 37500, len(h)))], axis=1))
    fps.append(fps[2][rng.random(12000) > 0.1] + np.array([0, 37]))          # a copy of item 2, 37 frames on
    parts = [hash_rows(i, fp, 1) for i, fp in enumerate(fps)]
    rows = {c: np.concatenate([r[c] for r in parts]) for c in HASH_COLUMNS}
    p = NearParams()
    shares = pair_shares(rows, p.max_hash_items)
    assert len(shares["shared"]) == 21 and shares["shared"].min() > 100        # every pair shares by chance
    kept = surviving_pairs(shares, p)
    assert kept.tolist() == pair_key(np.array([2]), np.array([6])).tolist()
    all_votes, kept_votes = bucket_votes(rows, 64, 2), bucket_votes(rows, 64, 2, kept)
    assert set(zip(kept_votes["item"].tolist(), kept_votes["other"].tolist())) == {(2, 6)}
    assert len(all_votes["n"]) > 20 * len(kept_votes["n"])
    assert [c[:3] for c in pair_candidates(kept_votes, p)] == [c[:3] for c in pair_candidates(all_votes, p)] == [(2, 6, 36)]
