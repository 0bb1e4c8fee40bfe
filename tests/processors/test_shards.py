import io
import tarfile

import pytest

from processors.shards import (MTIME, UnsafeMember, iter_tar, plan_shards, sanitize_member, tar_bytes,
                               validate_key)


def _samples(n):
    return [(f"seg-{i:04d}", [("json", b'{"i": %d}' % i), ("flac", bytes([i % 256]) * (100 + i))]) for i in range(n)]


def test_tar_is_byte_identical_and_fixed_metadata():
    a, written = tar_bytes(_samples(5))
    b, _ = tar_bytes(_samples(5))
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:2]] == ["seg-0000.json", "seg-0000.flac"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(MTIME, 0, 0, "", "", 0o644)}
    # Offsets point at each sample's first header.
    for w in written:
        assert a[w.offset:w.offset + len(w.key)].decode() == w.key


def test_round_trip_and_member_names_are_sanitised():
    data, _ = tar_bytes(_samples(3))
    assert list(iter_tar(io.BytesIO(data))) == _samples(3)
    for bad in ["../evil.json", "/abs.json", "a/b.json", "noext", "key with space.json"]:
        with pytest.raises(UnsafeMember):
            sanitize_member(bad)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../etc/passwd.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(UnsafeMember):
        list(iter_tar(io.BytesIO(buf.getvalue())))


def test_keys_with_dots_are_refused():
    with pytest.raises(ValueError):
        validate_key("seg.1")
    assert sanitize_member("ex-1.audio0.flac") == ("ex-1", "audio0.flac")


def test_plan_shards_respects_bytes_and_count_and_keeps_order():
    from schemas.shard import PlanRange

    units = [("p0", [40, 40]), ("p1", [40, 10]), ("p2", [200]), ("p3", [])]
    plans = plan_shards(units, target_bytes=90, max_samples=3, prefix="segments")
    assert [p.name for p in plans] == ["segments-000000.tar", "segments-000001.tar", "segments-000002.tar"]
    assert [p.ranges for p in plans] == [(PlanRange("p0", 0, 2),), (PlanRange("p1", 0, 2),), (PlanRange("p2", 0, 1),)]
    by_count = plan_shards(units, target_bytes=10**9, max_samples=3, prefix="s")
    # A shard closes inside a unit: p1's second sample opens the next one.
    assert [p.ranges for p in by_count] == [(PlanRange("p0", 0, 2), PlanRange("p1", 0, 1)),
                                            (PlanRange("p1", 1, 2), PlanRange("p2", 0, 1))]
    one_each = plan_shards(units, target_bytes=10**9, max_samples=1, prefix="s")
    assert [r for p in one_each for r in p.ranges] == [PlanRange("p0", 0, 1), PlanRange("p0", 1, 2), PlanRange("p1", 0, 1),
                                                       PlanRange("p1", 1, 2), PlanRange("p2", 0, 1)]
    assert all(len(p.ranges) == 1 for p in one_each)


def test_incremental_sink_and_sample_reads_match_a_whole_tar():
    from processors.shards import TarSink, read_sample

    whole, written = tar_bytes(_samples(6))
    buf = io.BytesIO()
    sink = TarSink(buf)
    got = [sink.add(k, m) for k, m in _samples(6)]
    sink.close()
    assert buf.getvalue() == whole and got == written
    for w, sample in zip(written, _samples(6)):
        assert read_sample(io.BytesIO(whole), w.offset, w.size) == sample


def test_joined_blobs_are_the_same_tar_as_one_written_whole():
    from processors.shards import join_samples, parse_blob, read_blob, sample_blob

    whole, written = tar_bytes(_samples(7))
    blobs = [read_blob(io.BytesIO(whole), w.offset, w.size) for w in written]
    assert join_samples(blobs) == whole
    assert [sample_blob(k, m) for k, m in _samples(7)] == blobs
    assert [parse_blob(b) for b in blobs] == _samples(7)
    assert join_samples([]) == tar_bytes([])[0]
