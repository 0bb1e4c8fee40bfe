"""Records that cross Ray: one Arrow schema each, exact round trips; labels typed and checked; strict JSON."""

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest

from schemas import arrow
from schemas.input import InputItem, display_uri
from schemas.labels import Event, LabelError, Labels, Quality, SpeakerTurn, Speakers, Transcript
from schemas.manifest import Manifest, ShardEntry, read_manifest, write_manifest
from schemas.reject import REJECTS_SCHEMA, Reject
from schemas.segment import Segment, Source
from schemas.shard import Containment, DuplicateRef, Patch, PlannedSample, PlanRange, ShardPlan, UnitPlanned
from schemas.unit import SegmentRef, UnitRef, UnitResult, pack_fingerprint

LABELS = Labels(transcript=Transcript("hello there", "manifest", language="en"),
                speakers=Speakers(2, "manifest", turns=(SpeakerTurn("S0", 0.0, 1.5), SpeakerTurn("S1", 1.5, 3.0))),
                events=(Event("Dog", 0.9, "yamnet@1", start_s=0.5, end_s=1.0),),
                quality=Quality("audiomill.measure@1", peak=0.5, snr_db=30.0))


def _round_trip(record):
    cls = type(record)
    table = arrow.to_table([record], cls)
    assert table.schema == arrow.arrow_schema(cls)
    back = arrow.from_table(cls, pa.Table.from_batches(table.to_batches()))[0]
    assert back == record
    return table


def test_input_item_keeps_non_utf8_names_and_typed_labels():
    path = "/data/caf\udce9.wav"                      # os.listdir's view of the byte 0xE9
    item = InputItem.local(path, corpus="c", license="CC0-1.0", split="train", size=10, version="7", labels=LABELS,
                           extra_json='{"manifest": {"fold": "1"}}')
    assert item.uri == "/data/caf\\xe9.wav" and item.location == b"/data/caf\xe9.wav" and item.path == path
    _round_trip(item)
    assert item.unit != InputItem.local(path, corpus="c", license="x", split="train", size=11, version="7").unit


def test_unit_result_round_trip_with_fingerprint_segments_and_reject():
    fp = np.array([[123, 4], [5, 6]], np.int64)
    ref = SegmentRef("seg-1", 0.0, 2.5, "speech", 0, 2048, True, LABELS)
    ok = UnitResult(unit="u1", uri="/a.wav", file_sha256="f" * 64, pcm_sha256="p" * 64, duration_s=2.5,
                    codec="WAV/PCM_16", lossless=True, native_sample_rate=44100, fingerprint=pack_fingerprint(fp),
                    part="/w/parts/u1.tar", segments=(ref,), warnings=("labels_not_placed: x",))
    table = _round_trip(ok)
    assert table.schema.field("fingerprint").type == pa.binary()
    assert (ok.fingerprint_array() == fp).all()
    bad = UnitResult(unit="u2", uri="/b.wav", reject=Reject("/b.wav", "ingest", "corrupt", "at frame 3"))
    _round_trip(bad)
    assert ok.ok and not bad.ok
    lean = ok.lean()                       # what the ingest tasks send the driver
    assert (lean.fingerprint, lean.segments, lean.hashes, lean.segment_count, lean.segment_seconds) == (b"", (), 2, 1, 2.5)
    assert lean.lean() == lean and _round_trip(lean) and bad.lean() == bad
    assert dataclasses.replace(lean, hashes=0, segment_count=0, segment_seconds=0.0) == \
        dataclasses.replace(ok, fingerprint=b"", segments=())
    assert ok.ref("/w/units/u1.arrow") == UnitRef("u1", "/a.wav", "f" * 64, "/w/parts/u1.tar", 1, 2.5, "/w/units/u1.arrow")
    assert lean.ref() == ok.ref() and ok.ref(patch_keys=("seg-1",)).patch_keys == ("seg-1",)


def test_shard_plan_with_patches_round_trips():
    patch = Patch(labels=Labels(transcript=Transcript("moved", "manifest", origin="/clip.wav")), label="dog",
                  duplicates=(DuplicateRef("/copy.wav", "s" * 64, "near", Labels(caption=None)),),
                  contained_in=(Containment("/long.wav", "l" * 64, 12.5, 15.0),))
    _round_trip(PlannedSample("seg-1", "/p.tar", 0, 100, patch, "u1"))
    _round_trip(ShardPlan("segments-000000.tar", (PlanRange("u1", 0, 3), PlanRange("u2", 0, 1))))
    _round_trip(UnitRef("u1", "/a.wav", "s" * 64, "/p.tar", 2, 5.5, "/w/units/u1.arrow", patch_keys=("seg-1",),
                        patches=(patch,)))
    _round_trip(UnitRef("u1", "/p.tar", "s" * 64, "/p.tar", 2, 5.5, index="/in/index.parquet", index_start=4, index_stop=6))
    _round_trip(UnitPlanned("u1", b"\x01" * 16, ("below_min_dnsmos", "filtered"), (2, 1), 2))


def test_rejects_schema_is_the_record_schema():
    assert REJECTS_SCHEMA.names == ["uri", "stage", "reason", "detail", "duplicate_of"]


@pytest.mark.parametrize("bad,needle", [
    ({"transcript": {"text": 5, "by": "manifest"}}, "transcript.text: expected text"),
    ({"transcript": {"by": "manifest"}}, "missing field 'text'"),
    ({"speakers": {"count": -1, "by": "m"}}, "speakers.count"),
    ({"speakers": {"count": 1, "by": "m", "turns": [{"speaker": "a", "start_s": math.nan, "end_s": 1}]}},
     "turns[0].start_s: expected a finite number"),
    ({"events": {"label": "x"}}, "events: expected a list"),
    ({"emotions": {}}, "unknown label 'emotions'"),
    ({"caption": {"text": "x", "by": "m", "colour": "red"}}, "unknown field 'colour'"),
])
def test_labels_from_dict_names_the_bad_field(bad, needle):
    with pytest.raises(LabelError) as e:
        Labels.from_dict(bad)
    assert needle in str(e.value)


def test_labels_json_leaves_out_absent_labels_and_empty_fields():
    d = LABELS.to_dict()
    assert set(d) == {"transcript", "speakers", "events", "quality"}
    assert "origin" not in d["transcript"] and d["quality"] == {"by": "audiomill.measure@1", "peak": 0.5, "snr_db": 30.0}
    assert Labels.from_dict(d) == LABELS


def test_segment_json_is_strict():
    seg = Segment("seg-1", Source("c", "/a.wav", "s", "CC0-1.0", "train"), 0.0, 1.0, "speech", LABELS,
                  {"speech_ratio": 0.9})
    assert Segment.from_json(seg.to_json()) == seg
    with pytest.raises(ValueError):
        Segment("seg-2", seg.source, 0.0, 1.0, "speech", extra={"x": math.nan}).to_json()


def test_display_uri_escapes_only_undecodable_bytes():
    assert display_uri("/d/ünï ñ.wav") == "/d/ünï ñ.wav"
    assert display_uri("/d/\udcff\udcfe.wav") == "/d/\\xff\\xfe.wav"


def test_one_manifest_writer_for_every_layer(tmp_path):
    m = Manifest(layer="examples", name="x", version="1", config_hash="abc", summary={"examples": 2},
                 shards=(ShardEntry("sft/examples-000000.tar", 10, 2, "d" * 64),))
    write_manifest(str(tmp_path), m)
    assert read_manifest(str(tmp_path)) == m
    assert read_manifest(str(tmp_path / "none")) is None
    with pytest.raises(ValueError):
        Manifest(layer="bogus", name="x", version="1", config_hash="", summary={}, shards=())


def test_atomic_writes_use_unique_temporary_names(tmp_path, monkeypatch):
    """Two attempts of one task writing the same file at once never share a temporary file."""
    import threading

    from schemas import files

    seen, barrier = [], threading.Barrier(2)
    real_open = open

    def spy(path, mode="r", *a, **k):
        if "wb" in mode:
            seen.append(path)
            barrier.wait(timeout=5)      # both writers hold their temporary file at the same time
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    writers = [threading.Thread(target=files.atomic_write, args=(str(tmp_path / "x.bin"), bytes([i]) * 1000))
               for i in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert len(set(seen)) == 2 and all(".tmp-" in p for p in seen)
    assert (tmp_path / "x.bin").read_bytes() in (bytes([0]) * 1000, bytes([1]) * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from schemas import files

    def boom(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", boom)
    with pytest.raises(OSError):
        files.atomic_write(str(tmp_path / "y.bin"), b"data")
    assert list(tmp_path.iterdir()) == []
