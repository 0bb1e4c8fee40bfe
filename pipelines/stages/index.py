"""A finished segments output as units of work, one per shard, without its index on the driver.

``index.parquet`` is written in shard order, each shard's rows together (``pipelines/passes.py:commit_layer``
streams it from the pack tasks' parts). The driver streams its shard and time columns once and keeps each
shard's range of rows (``shard_rows``); the task given a shard reads the row groups that hold its range
(``read_rows``) and makes the segment records there (``index_segments``). So the label job's driver holds a
few numbers per shard, never a record per segment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath

import fsspec
import numpy as np
import pyarrow as pa

from pipelines.card import parquet_batches, parquet_file
from schemas.labels import Labels
from schemas.manifest import Manifest
from schemas.unit import SegmentRef, UnitRef, UnitResult

COLUMNS = ("key", "shard", "start_s", "end_s", "kind", "offset", "size")


class IndexOrderError(ValueError):
    """The index's rows of one shard are not together: it was not written by a commit."""


@dataclasses.dataclass(frozen=True)
class ShardRows:
    """The rows ``[start, stop)`` of one shard in an index, and its segments' seconds."""

    start: int = 0
    stop: int = 0
    seconds: float = 0.0


class ShardRanges:
    """Each shard's range of rows in an index, added up from its batches in order (``add``), which need
    the shard, start and end columns. Raises ``IndexOrderError`` naming the first shard whose rows are split."""

    def __init__(self):
        self.found: dict[str, ShardRows] = {}
        self.last = None       # the shard of the last batch's last row, whose range the next batch may go on with
        self.at = 0            # rows added so far

    def add(self, batch) -> None:
        names = batch.column("shard").to_numpy(zero_copy_only=False)
        seconds = batch.column("end_s").to_numpy() - batch.column("start_s").to_numpy()
        starts = np.concatenate([[0], np.flatnonzero(names[1:] != names[:-1]) + 1])
        sums = np.add.reduceat(seconds, starts) if len(names) else []
        at, found = self.at, self.found
        for begin, end, total in zip(starts, [*starts[1:], len(names)], sums):
            name = names[begin]
            if name is None:
                raise IndexOrderError(f"row {at + begin} names no shard")
            if name == self.last and begin == 0:
                r = found[name]
                found[name] = ShardRows(r.start, at + end, r.seconds + float(total))
            elif name in found:
                raise IndexOrderError(f"the rows of shard {name} are not together (row {at + begin})")
            else:
                found[name] = ShardRows(at + begin, at + end, float(total))
        if len(names):
            self.last = names[-1]
        self.at += len(names)


RANGE_COLUMNS = ["shard", "start_s", "end_s"]


def shard_rows(url: str, batch_rows: int = 1 << 16) -> dict[str, ShardRows]:
    """Each shard's range of rows in the index at ``url``, read ``batch_rows`` rows of three columns at a
    time (``ShardRanges``)."""
    ranges = ShardRanges()
    for batch in parquet_batches(url, RANGE_COLUMNS, batch_rows):
        ranges.add(batch)
    return ranges.found


def read_rows(url: str, start: int, stop: int) -> pa.Table:
    """Rows ``[start, stop)`` of the index at ``url`` (its ``COLUMNS``), reading only the row groups that
    hold them."""
    with fsspec.open(url, "rb") as f:
        pf = parquet_file(f)
        groups, first, at = [], 0, 0
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if at < stop and at + n > start:
                first = at if not groups else first
                groups.append(i)
            at += n
        if not groups:
            return pf.schema_arrow.empty_table().select(list(COLUMNS))
        return pf.read_row_groups(groups, columns=list(COLUMNS)).slice(start - first, stop - start)


def index_segments(table: pa.Table) -> tuple[SegmentRef, ...]:
    """One shard's index rows as segment records, in the order of their samples in the shard."""
    rows = sorted(table.select(list(COLUMNS)).to_pylist(), key=lambda r: r["offset"])
    return tuple(SegmentRef(r["key"], r["start_s"], r["end_s"], r["kind"], r["offset"], r["size"], False, Labels())
                 for r in rows)


def shard_unit(part: str, sha256: str) -> str:
    """A shard's unit id: its url and content."""
    return hashlib.sha256(f"{part}\0{sha256}".encode()).hexdigest()[:24]


def shard_refs(url: str, manifest: Manifest, batch_rows: int = 1 << 16) -> list[UnitRef]:
    """One unit per shard of the segments output at ``url``, in the manifest's order, each naming its rows of
    the index; a task reads its segments from there (``pipelines/stages/units.py:segments_of``)."""
    index = posixpath.join(url, "index.parquet")
    return _refs(url, manifest, shard_rows(index, batch_rows))


def _refs(url: str, manifest: Manifest, rows: dict[str, ShardRows]) -> list[UnitRef]:
    index = posixpath.join(url, "index.parquet")
    refs = []
    for entry in manifest.shards:
        part = posixpath.join(url.rstrip("/"), entry.name)
        r = rows.get(entry.name, ShardRows())
        refs.append(UnitRef(shard_unit(part, entry.sha256), part, entry.sha256, part, r.stop - r.start, r.seconds,
                            index=index, index_start=r.start, index_stop=r.stop))
    return refs


def shard_units(url: str, manifest: Manifest) -> list[UnitResult]:
    """``shard_refs`` with each unit's segments: what the build job plans over, every segment at once."""
    with fsspec.open(posixpath.join(url, "index.parquet"), "rb") as f:
        index = parquet_file(f).read(columns=list(COLUMNS))
    ranges = ShardRanges()               # from the table already read, not from a second read of the file
    for batch in index.to_batches():
        ranges.add(batch)
    return [UnitResult(unit=r.unit, uri=r.uri, file_sha256=r.source_sha256, part=r.part,
                       segments=index_segments(index.slice(r.index_start, r.index_stop - r.index_start)))
            for r in _refs(url, manifest, ranges.found)]
