"""A segments output's index as units, one per shard: ranges found by streaming, rows read from the row groups
that hold them, and an index whose shards are split refused before any work."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.label import damaged_input
from pipelines.stages import index as index_module
from pipelines.stages.index import (IndexOrderError, ShardRows, index_segments, read_rows, shard_refs, shard_rows,
                                    shard_units)
from pipelines.stages.units import segments_of
from schemas.manifest import Manifest, ShardEntry
from schemas.segment import INDEX_SCHEMA

# (shard, samples): a shard across batch and row-group boundaries, a shard of one row, a shard of many
SHARDS = [("a.tar", 5), ("b.tar", 1), ("c.tar", 7), ("d.tar", 2)]


def _rows(shards=SHARDS):
    rows = []
    for name, n in shards:
        for i in range(n):
            # (offsets in reverse within each shard: the segments come back in the shard's order anyway)
            rows.append({"key": f"{name[0]}{i}", "shard": name, "start_s": float(i), "end_s": i + 0.25 * (i + 1),
                         "kind": "speech", "offset": 1024 * (n - i), "size": 1024})
    return rows


def _write(path, rows, group_rows=4):
    names = INDEX_SCHEMA.names
    table = pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows], schema=INDEX_SCHEMA)
    pq.write_table(table, path, row_group_size=group_rows)
    return str(path)


def test_each_shards_range_and_seconds_whatever_the_batches(tmp_path):
    url = _write(tmp_path / "index.parquet", _rows())
    want = {"a.tar": ShardRows(0, 5, 0.25 * 15), "b.tar": ShardRows(5, 6, 0.25), "c.tar": ShardRows(6, 13, 0.25 * 28),
            "d.tar": ShardRows(13, 15, 0.25 * 3)}
    for batch_rows in (1, 2, 3, 64):
        assert shard_rows(url, batch_rows) == want, batch_rows


def test_a_shard_whose_rows_are_split_is_named(tmp_path):
    rows = _rows()
    rows.append(rows.pop(0))                 # a.tar's first row after d.tar's
    url = _write(tmp_path / "index.parquet", rows)
    with pytest.raises(IndexOrderError, match="shard a.tar are not together"):
        shard_rows(url, batch_rows=3)


def test_a_range_is_read_from_the_row_groups_that_hold_it(tmp_path, monkeypatch):
    rows = _rows()
    url = _write(tmp_path / "index.parquet", rows, group_rows=4)      # groups [0,4) [4,8) [8,12) [12,15)
    read = []
    original = pq.ParquetFile.read_row_groups

    def spy(self, groups, *args, **kwargs):
        read.append(list(groups))
        return original(self, groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    assert read_rows(url, 6, 13).to_pylist() == [{k: r[k] for k in index_module.COLUMNS} for r in rows[6:13]]
    assert read_rows(url, 5, 6).to_pylist()[0]["key"] == "b0"
    assert read_rows(url, 15, 15).num_rows == 0
    assert read == [[1, 2, 3], [1]]


def test_a_shards_segments_come_in_the_order_of_their_samples(tmp_path):
    url = _write(tmp_path / "index.parquet", _rows())
    segs = index_segments(read_rows(url, 6, 13))
    assert [s.key for s in segs] == [f"c{i}" for i in reversed(range(7))]
    assert [s.offset for s in segs] == sorted(s.offset for s in segs)
    assert (segs[-1].start_s, segs[-1].end_s, segs[-1].kind, segs[-1].size) == (0.0, 0.25, "speech", 1024)


def _output(tmp_path, rows, shards=SHARDS, extra=(), group_rows=4):
    """A segments output whose shards are files of the right sizes, its index from ``rows``."""
    entries = []
    for name, n in [*shards, *extra]:
        (tmp_path / name).write_bytes(b"\0" * 1024 * (n + 1))
        entries.append(ShardEntry(name, 1024 * (n + 1), n, name[0] * 64))
    _write(tmp_path / "index.parquet", rows, group_rows)
    return str(tmp_path), Manifest("segments", "t", "1", "h" * 64, {}, tuple(entries))


def test_the_label_jobs_units_name_their_rows_and_the_build_jobs_carry_the_same_segments(tmp_path):
    url, manifest = _output(tmp_path, _rows(), extra=[("e.tar", 0)])    # a shard with no index row: no segments
    refs, units = shard_refs(url, manifest), shard_units(url, manifest)
    assert [(r.part, r.index_start, r.index_stop, r.segment_count) for r in refs] == [
        (f"{url}/{n}.tar", a, b, b - a) for n, a, b in [("a", 0, 5), ("b", 5, 6), ("c", 6, 13), ("d", 13, 15), ("e", 0, 0)]]
    assert len({r.unit for r in refs}) == 5 and [u.unit for u in units] == [r.unit for r in refs]
    assert [segments_of(r) for r in refs] == [u.segments for u in units]
    assert [len(u.segments) for u in units] == [5, 1, 7, 2, 0]
    assert not damaged_input(url, manifest)


def test_an_input_whose_index_splits_a_shard_is_refused_before_any_work(tmp_path):
    rows = _rows()
    rows.insert(3, rows.pop(8))              # one of c.tar's rows among a.tar's
    url, manifest = _output(tmp_path, rows)
    problems = damaged_input(url, manifest, batch_rows=2)
    assert len(problems) == 1 and "not in shard order" in problems[0] and "shard a.tar" in problems[0], problems


def test_samples_outside_their_shards_are_counted_over_every_batch(tmp_path):
    rows = _rows()
    for i in (1, 9, 14):
        rows[i]["offset"] += 10 ** 6
    url, manifest = _output(tmp_path, rows)
    assert damaged_input(url, manifest, batch_rows=2) == [
        f"input {url!r}: its index.parquet names 3 sample(s) outside their shards (first: a1 in a.tar)"]


def test_finding_the_ranges_holds_a_row_group_not_the_file(tmp_path):
    """Ten shards of 8,000 rows in row groups of 1,000 (a 2 MB index): the Python memory the driver's scan
    peaks at is a row group's reads and the footer, under a quarter of what pyarrow's default reader (which
    pre-buffers every row group's columns on the first batch) holds for the same three columns."""
    import tracemalloc

    import fsspec

    from pipelines.stages.index import RANGE_COLUMNS

    def peak(fn):
        tracemalloc.start()
        try:
            out = fn()
            return tracemalloc.get_traced_memory()[1], out
        finally:
            tracemalloc.stop()

    def whole(url):
        with fsspec.open(url, "rb") as f:
            return [len(b) for b in pq.ParquetFile(f).iter_batches(batch_size=1000, columns=RANGE_COLUMNS)]

    for n in (8000,):
        shards = [(f"{s}.tar", n) for s in "abcdefghij"]
        (tmp_path / str(n)).mkdir()
        url, manifest = _output(tmp_path / str(n), _rows(shards), shards, group_rows=1000)
        streamed, refs = peak(lambda: shard_refs(url, manifest, batch_rows=1000))
        buffered, _ = peak(lambda: whole(f"{url}/index.parquet"))
        assert [r.segment_count for r in refs] == [n] * 10
        assert streamed < buffered / 4, (n, streamed, buffered)
