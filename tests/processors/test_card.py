"""The dataset card is added up from the index batch by batch: the same card whatever the batches, a browse
sample that is the one a sort of the whole index gives, and memory that does not grow with the rows."""

import random
import tracemalloc

from processors.builders.pretrain import stable_hash
from processors.card import BROWSE_PER_TASK, BROWSE_SEGMENTS, CardStats, card_markdown

MANIFEST = {"layer": "segments", "name": "t", "version": "1", "config_hash": "h", "shards": []}


def segment_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"key": f"k{seed:07d}-{i:07d}", "kind": rng.choice(["speech", "sound", "music"]),
             "language": rng.choice(["en", "de", None]), "duration_s": rng.choice([1.0, 2.5, 30.0]),
             "events": [rng.choice(["Speech", "Dog", "Music"])], "speakers": rng.choice([1, 2, None]),
             "gender": rng.choice(["female", "male", None]), "dnsmos_ovrl": rng.choice([2.0, 3.5, None]),
             "license": "cc-by-4.0", "corpus": "c", "shard": "s.tar", "offset": i, "size": 1}
            for i in range(n)]


def stats_of(rows: list[dict], batch: int, layer: str = "segments") -> CardStats:
    stats = CardStats(layer)
    for i in range(0, len(rows), batch):
        stats.add(rows[i:i + batch])
    return stats


def test_the_card_is_the_same_whatever_the_batches_and_the_browse_sample_is_the_sorted_one():
    rows = segment_rows(500)
    cards = {card_markdown(MANIFEST, stats_of(rows, b), []) for b in (1, 7, 500)}
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    cards.add(card_markdown(MANIFEST, stats_of(shuffled, 64), []))
    assert len(cards) == 1
    stats = stats_of(shuffled, 33)
    assert [r["key"] for r in stats.browsed()] == \
        [r["key"] for r in sorted(rows, key=lambda r: stable_hash(f"browse/{r['key']}"))[:BROWSE_SEGMENTS]]


def test_the_card_tables_hold_the_hand_counted_totals():
    rows = [{"key": "a", "kind": "speech", "language": "en", "duration_s": 1800.0, "events": ["Speech", "Music"],
             "speakers": 2, "gender": None, "dnsmos_ovrl": 3.0, "license": "cc0", "corpus": "x",
             "shard": "s", "offset": 0, "size": 1},
            {"key": "b", "kind": "speech", "language": "de", "duration_s": 900.0, "events": ["Speech"],
             "speakers": 1, "gender": "male", "dnsmos_ovrl": 2.0, "license": "cc0", "corpus": "y",
             "shard": "s", "offset": 1, "size": 1},
            {"key": "c", "kind": "music", "language": None, "duration_s": 3600.0, "events": ["Music"],
             "speakers": None, "gender": None, "dnsmos_ovrl": None, "license": "cc-by", "corpus": "x",
             "shard": "s", "offset": 2, "size": 1}]
    stats = stats_of(rows, 2)
    stats.add_rejects([{"reason": "duplicate"}, {"reason": "too_short"}, {"reason": "duplicate"}])
    text = card_markdown(MANIFEST, stats, [])
    assert "3 samples, 1.750 hours of audio" in text
    assert "| speech | 2 | 0.750 |" in text and "| music | 1 | 1.000 |" in text
    assert "| en | 1 | 0.500 |" in text and "| de | 1 | 0.250 |" in text
    assert "| Speech | 2 |" in text and "| Music | 1 |" in text          # the strongest event only
    assert "| cc0 | x, y |" in text and "| cc-by | x |" in text
    assert "DNSMOS overall: 2 speech segments, mean 2.50, min 2.00, max 3.00." in text
    assert "| duplicate | 2 |" in text and "| too_short | 1 |" in text
    assert "| male | 1 |" in text and "| 1 | 1 |" in text and "| 2 | 1 |" in text


def test_examples_browse_the_first_keys_of_each_stage_and_task():
    rng = random.Random(2)
    rows = [{"key": f"e{rng.randrange(10**9):09d}", "stage": rng.choice(["pretrain", "sft"]),
             "task": rng.choice(["asr", "caption", "events"]), "split": "train", "duration_s": 5.0,
             "rejected_kind": None} for _ in range(300)]
    stats = stats_of(rows, 16, "examples")
    want = []
    seen: dict = {}
    for r in sorted(rows, key=lambda r: r["key"]):
        if seen.get((r["stage"], r["task"]), 0) < BROWSE_PER_TASK:
            seen[(r["stage"], r["task"])] = seen.get((r["stage"], r["task"]), 0) + 1
            want.append(r["key"])
    assert [r["key"] for r in stats.browsed()] == want and len(want) == 6 * BROWSE_PER_TASK


def test_the_card_holds_no_rows_as_the_index_grows():
    """A card that kept its rows would grow by the 40,000 rows between the two readings."""
    stats = CardStats("segments")
    tracemalloc.start()
    try:
        for n, seed in ((10_000, 3), (40_000, 4)):
            for i in range(0, n, 1000):
                stats.add(segment_rows(1000, seed + i))
            if n == 10_000:
                after_first = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - after_first
    finally:
        tracemalloc.stop()
    assert stats.samples == 50_000
    assert grown < 100_000, grown          # one row dict alone is about 1 KB
    assert len(stats.browsed()) == BROWSE_SEGMENTS
