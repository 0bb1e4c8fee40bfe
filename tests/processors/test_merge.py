"""Labels survive dedup: merged from dropped copies, moved from dropped clips, recorded when they cannot be
placed or disagree — on hand-made units, so each rule is seen on its own."""

import json

import pytest

from processors.dedup import Decisions, Dropped, Relation
from processors.merge import apply_patch, plan_merges
from schemas.labels import Event, Labels, SpeakerTurn, Speakers, Transcript
from schemas.segment import Segment, Source
from schemas.unit import SegmentRef, UnitResult


def _seg(key, start, end, kind="speech", **labels):
    return SegmentRef(key, start, end, kind, 0, 1024, bool(labels), Labels(**labels))


def _unit(name, *segments, duration=None, class_label=""):
    return UnitResult(unit=name, uri=f"/c/{name}.wav", file_sha256=name * 4, duration_s=duration or segments[-1].end_s,
                      segments=segments, class_label=class_label)


HELLO = Transcript("hello world", "manifest", language="en")


def test_a_dropped_copys_transcript_lands_on_the_kept_segment_with_its_origin():
    kept = _unit("kept", _seg("k0", 0.2, 2.2))
    copy = _unit("copy", _seg("c0", 0.0, 2.0, transcript=HELLO))
    r = plan_merges([kept, copy], Decisions((Dropped(1, 0, "near", 0.25),), ()), drop_contained=False)
    assert r.patches["k0"].labels.transcript == Transcript("hello world", "manifest", "en", origin="/c/copy.wav")
    assert [d.uri for d in r.patches["k0"].duplicates] == ["/c/copy.wav"]
    assert (r.counts.merged, r.counts.conflicts, r.counts.not_placed) == (1, 0, 0)
    assert [(x.uri, x.reason, x.duplicate_of) for x in r.rejects] == [("/c/copy.wav", "duplicate", "/c/kept.wav")]
    assert r.dropped == {"copy"}


def test_speaker_turns_move_with_the_offset_between_copies():
    turns = (SpeakerTurn("A", 0.0, 1.0), SpeakerTurn("B", 1.0, 2.0))
    kept = _unit("kept", _seg("k0", 1.0, 3.1))
    copy = _unit("copy", _seg("c0", 0.0, 2.0, speakers=Speakers(2, "manifest", turns)))
    r = plan_merges([kept, copy], Decisions((Dropped(1, 0, "near", 1.1),), ()), False)
    moved = r.patches["k0"].labels.speakers
    assert [(t.speaker, t.start_s, t.end_s) for t in moved.turns] == [("A", 0.1, 1.1), ("B", 1.1, 2.1)]


def test_a_disagreeing_label_stays_beside_the_kept_one():
    kept = _unit("kept", _seg("k0", 0.0, 2.0, transcript=HELLO))
    copy = _unit("copy", _seg("c0", 0.0, 2.0, transcript=Transcript("yellow world", "manifest")))
    r = plan_merges([kept, copy], Decisions((Dropped(1, 0, "exact", 0.0),), ()), False)
    patch = r.patches["k0"]
    assert patch.labels.transcript is None                    # the kept label is not touched
    [dup] = patch.duplicates
    assert dup.labels.transcript.text == "yellow world" and r.counts.conflicts == 1
    seg = apply_patch(Segment("k0", Source("c", "/c/kept.wav", "s", "x", "train"), 0.0, 2.0, "speech",
                              Labels(transcript=HELLO)), patch)
    assert seg.labels.transcript == HELLO
    assert json.loads(seg.to_json())["extra"]["duplicates"][0]["labels"]["transcript"]["text"] == "yellow world"


def test_a_label_that_fits_no_kept_segment_is_recorded_not_lost():
    kept = _unit("kept", _seg("k0", 0.0, 5.0), _seg("k1", 5.5, 9.0))
    copy = _unit("copy", _seg("c0", 0.0, 9.0, transcript=HELLO))    # one utterance where kept has two segments
    r = plan_merges([kept, copy], Decisions((Dropped(1, 0, "near", 0.0),), ()), False)
    assert r.counts.not_placed == 1 and r.counts.merged == 0
    recorded = [d.labels.transcript for k in ("k0", "k1") for d in r.patches[k].duplicates if d.labels.transcript]
    assert recorded == [HELLO]


def test_a_class_label_of_the_whole_input_applies_to_the_whole_kept_input():
    kept = _unit("kept", _seg("k0", 0.0, 4.0, kind="sound"), _seg("k1", 4.0, 6.0, kind="speech"))
    copy = _unit("copy", _seg("c0", 0.0, 6.0, kind="sound", events=(Event("dog", 1.0, "manifest"),)),
                 class_label="dog")
    r = plan_merges([kept, copy], Decisions((Dropped(1, 0, "near", 0.0),), ()), False)
    assert [e.label for e in r.patches["k0"].labels.events] == ["dog"] and r.patches["k1"].label == "dog"
    assert r.counts.merged == 2 and r.counts.not_placed == 0


def test_a_kept_clip_records_where_the_longer_recording_holds_it():
    rec = _unit("rec", _seg("r0", 0.0, 4.0), _seg("r1", 10.2, 12.3), _seg("r2", 14.0, 20.0))
    clip = _unit("clip", _seg("c0", 0.1, 2.2, transcript=HELLO), duration=2.4)
    r = plan_merges([rec, clip], Decisions((), (Relation(1, 0, "contained", 10.0),)), drop_contained=False)
    [where] = r.patches["c0"].contained_in
    assert (where.uri, where.start_s, where.end_s) == ("/c/rec.wav", 10.0, 12.4)
    assert not r.rejects and not r.dropped


def test_a_dropped_clip_moves_its_transcript_onto_the_covering_segment():
    rec = _unit("rec", _seg("r0", 0.0, 4.0), _seg("r1", 10.2, 12.3), _seg("r2", 14.0, 20.0))
    clip = _unit("clip", _seg("c0", 0.1, 2.2, transcript=HELLO), duration=2.4)
    r = plan_merges([rec, clip], Decisions((), (Relation(1, 0, "contained", 10.0),)), drop_contained=True)
    assert r.patches["r1"].labels.transcript == Transcript("hello world", "manifest", "en", origin="/c/clip.wav")
    assert "r0" not in r.patches and "c0" not in r.patches
    assert r.counts.moved == 1 and r.dropped == {"clip"}
    assert [(x.reason, x.duplicate_of) for x in r.rejects] == [("contained", "/c/rec.wav")]


def test_a_clip_whose_transcript_fits_no_segment_is_kept():
    rec = _unit("rec", _seg("r0", 0.0, 30.0))            # one long segment holds the clip and more speech
    clip = _unit("clip", _seg("c0", 0.1, 2.2, transcript=HELLO), duration=2.4)
    r = plan_merges([rec, clip], Decisions((), (Relation(1, 0, "contained", 10.0),)), drop_contained=True)
    assert r.counts.clips_kept == 1 and not r.dropped and not r.rejects
    assert r.patches["c0"].contained_in[0].uri == "/c/rec.wav"


@pytest.mark.parametrize("drop", [False, True])
def test_labels_of_a_clip_s_own_duplicates_travel_with_it(drop):
    rec = _unit("rec", _seg("r0", 9.9, 12.5))
    clip = _unit("clip", _seg("c0", 0.1, 2.2), duration=2.4)
    copy = _unit("copy", _seg("x0", 0.1, 2.2, transcript=HELLO), duration=2.4)
    decisions = Decisions((Dropped(2, 1, "exact", 0.0),), (Relation(1, 0, "contained", 10.0),))
    r = plan_merges([rec, clip, copy], decisions, drop_contained=drop)
    target = "r0" if drop else "c0"
    assert r.patches[target].labels.transcript.text == "hello world"
    assert "/c/copy.wav" in [d.uri for d in r.patches[target].duplicates]
