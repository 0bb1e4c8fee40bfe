"""The held-out split joins recordings by voice and holds out whole groups; the mix picks hours per kind in a
stable order and keeps a task's examples at its weight; diversity counts templates and their entropy."""

import math
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.builders.mix import diversity, keep, select_hours
from processors.builders.split import held_out, voice_groups


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_recordings_sharing_a_voice_are_one_group_and_others_are_not():
    a, b, c = unit([1, 0, 0, 0]), unit([0, 1, 0, 0]), unit([0, 0, 1, 0])
    near_a = unit([1, 0.1, 0, 0])                              # cosine 0.995 with a
    groups = voice_groups({"r1": [a], "r2": [near_a, b], "r3": [b * 1.0], "r4": [c], "r5": []}, same_voice=0.8)
    assert groups["r1"] == groups["r2"] == groups["r3"] == "r1"      # r1–r2 by a, r2–r3 by b
    assert groups["r4"] == "r4" and groups["r5"] == "r5"
    assert voice_groups({"r1": [a], "r2": [near_a]}, same_voice=0.999) == {"r1": "r1", "r2": "r2"}


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=4), st.floats(0.01, 5.0), min_size=2, max_size=12),
       st.floats(0.05, 0.9))
def test_held_out_groups_hold_about_the_fraction_and_never_all(hours, fraction):
    chosen = held_out(hours, fraction)
    assert chosen and len(chosen) < len(hours)
    held = sum(hours[g] for g in chosen)
    total = sum(hours.values())
    # groups were added until the fraction was reached: without the last one it was not
    last_needed = any(held - hours[g] < fraction * total for g in chosen)
    assert held >= fraction * total or len(chosen) == len(hours) - 1
    assert last_needed or len(chosen) == 1
    assert held_out(hours, fraction) == chosen and held_out(hours, 0.0) == set()


def test_select_hours_takes_each_kind_up_to_its_target_in_a_stable_order():
    segs = [(f"s{i}", "speech", 10.0) for i in range(100)] + [(f"m{i}", "music", 30.0) for i in range(10)]
    picked = select_hours(segs, {"speech": 0.1})                      # 360 s of 1000 s of speech
    speech = [k for k in picked if k.startswith("s")]
    assert len(speech) == 36 and all(f"m{i}" in picked for i in range(10))
    assert select_hours(list(reversed(segs)), {"speech": 0.1}) == picked
    assert not [k for k in select_hours(segs, {"speech": 0.0}) if k.startswith("s")]


def test_task_weights_keep_their_share_and_diversity_is_entropy():
    ids = [f"ex-{i:05d}" for i in range(4000)]
    share = sum(keep(i, 0.25) for i in ids) / len(ids)
    assert abs(share - 0.25) < 0.03 and all(keep(i, 1.0) for i in ids) and not any(keep(i, 0.0) for i in ids)
    used = [("asr", "asr.v1.1")] * 2 + [("asr", "asr.v1.2")] * 2 + [("lid", "lid.v1.1")]
    d = diversity(used, {"asr": 4, "lid": 3})
    assert d["asr"] == {"templates": 2, "of": 4, "entropy_bits": 1.0, "max_bits": 2.0}
    assert d["lid"]["entropy_bits"] == 0.0 and d["lid"]["max_bits"] == round(math.log2(3), 3)
    assert Counter(t for t, _ in used) == Counter({"asr": 4, "lid": 1})
