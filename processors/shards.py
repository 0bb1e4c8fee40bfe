"""Deterministic WebDataset tars: fixed member order, mtime, uid/gid and mode; written to a temporary
name and renamed; read back with member names checked.

A sample is a key and its members, e.g. ``("seg-ab12", [("json", b"{…}"), ("flac", b"fLaC…")])``; the tar
holds ``seg-ab12.json`` and ``seg-ab12.flac`` in that order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence

from schemas.shard import PlanRange, ShardPlan

MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed, so equal content gives equal bytes
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_EXT_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

Sample = tuple[str, list[tuple[str, bytes]]]


class UnsafeMember(ValueError):
    """A tar member name that could escape the reader's directory or breaks WebDataset keys."""


def validate_key(key: str) -> str:
    """WebDataset splits member names at the first dot, so keys hold no dots (or slashes)."""
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid sample key {key!r}: use letters, digits, '-' and '_' only")
    return key


def sanitize_member(name: str) -> tuple[str, str]:
    """``"seg-1.audio0.flac"`` → ("seg-1", "audio0.flac"); raises ``UnsafeMember`` for paths, '..',
    absolute names or keys WebDataset cannot split."""
    if name.startswith("/") or "\\" in name or ".." in name.split("/") or "/" in name:
        raise UnsafeMember(f"unsafe tar member name {name!r}")
    key, dot, ext = name.partition(".")
    if not dot or not _KEY_RE.match(key) or not _EXT_RE.match(ext):
        raise UnsafeMember(f"tar member {name!r} is not KEY.EXT")
    return key, ext


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@dataclasses.dataclass(frozen=True)
class WrittenSample:
    key: str
    offset: int   # byte offset of the sample's first header
    size: int     # bytes of its headers and data


class TarSink:
    """Writes samples one at a time into an open binary file (the same bytes ``tar_bytes`` would give for
    all of them at once); ``add`` returns where each sample landed."""

    def __init__(self, fileobj) -> None:
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)
        self.written: list[WrittenSample] = []

    def add(self, key: str, members: list[tuple[str, bytes]]) -> WrittenSample:
        validate_key(key)
        start = self._tar.offset
        for ext, data in members:
            self._tar.addfile(_info(f"{key}.{ext}", len(data)), io.BytesIO(data))
        w = WrittenSample(key, start, self._tar.offset - start)
        self.written.append(w)
        return w

    def close(self) -> None:
        self._tar.close()


def write_tar(fileobj, samples: Iterable[Sample]) -> list[WrittenSample]:
    """Write samples into an open binary file; return where each landed."""
    sink = TarSink(fileobj)
    for key, members in samples:
        sink.add(key, members)
    sink.close()
    return sink.written


def tar_bytes(samples: Iterable[Sample]) -> tuple[bytes, list[WrittenSample]]:
    buf = io.BytesIO()
    written = write_tar(buf, samples)
    return buf.getvalue(), written


def join_samples(blobs: list[bytes]) -> bytes:
    """Samples already in tar form (the bytes ``read_blob`` returns) → a whole tar, the same bytes
    ``tar_bytes`` gives for them: the blobs, the two zero blocks that end an archive, and zeros up to
    the next 10240-byte record, as tarfile writes them."""
    body = b"".join(blobs) + bytes(2 * tarfile.BLOCKSIZE)
    return body + bytes(-len(body) % tarfile.RECORDSIZE)


def sample_blob(key: str, members: list[tuple[str, bytes]]) -> bytes:
    """One sample in tar form (its headers and padded data), as it sits inside a tar."""
    buf = io.BytesIO()
    w = TarSink(buf).add(key, members)
    return buf.getvalue()[w.offset:w.offset + w.size]


def read_blob(fileobj, offset: int, size: int) -> bytes:
    """The raw tar bytes (headers and data) of the sample at ``offset``."""
    fileobj.seek(offset)
    blob = fileobj.read(size)
    if len(blob) != size:
        raise ValueError(f"tar ends inside the sample at offset {offset}")
    return blob


def parse_blob(blob: bytes) -> Sample:
    samples = list(iter_tar(io.BytesIO(blob + bytes(1024))))
    if len(samples) != 1:
        raise ValueError(f"expected one sample in {len(blob)} bytes, found {len(samples)}")
    return samples[0]


def read_sample(fileobj, offset: int, size: int) -> Sample:
    """The one sample stored at ``offset`` (``size`` bytes, headers included) of an open tar file."""
    return parse_blob(read_blob(fileobj, offset, size))


def iter_tar(fileobj) -> Iterator[Sample]:
    """Samples of a tar in order, member names sanitised; members of one key must be adjacent."""
    current: Sample | None = None
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = sanitize_member(info.name)
            data = tar.extractfile(info).read()
            if current is None or current[0] != key:
                if current is not None:
                    yield current
                current = (key, [])
            current[1].append((ext, data))
    if current is not None:
        yield current


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan_shards(units: Iterable[tuple[str, Sequence[int]]], target_bytes: int, max_samples: int,
                prefix: str) -> list[ShardPlan]:
    """Pack ordered samples into size-targeted shards, in order: a shard closes before the sample that
    would push it past ``target_bytes`` or ``max_samples``. ``units``: (unit, its samples' sizes), in order;
    a shard names ranges of its units' samples, so this holds sizes, never sample records."""
    plans: list[ShardPlan] = []
    ranges: list[PlanRange] = []
    count = size = 0
    for unit, sizes in units:
        start = 0
        for i, n in enumerate(sizes):
            if count and (size + n > target_bytes or count >= max_samples):
                if i > start:
                    ranges.append(PlanRange(unit, start, i))
                plans.append(ShardPlan(f"{prefix}-{len(plans):06d}.tar", tuple(ranges)))
                ranges, count, size, start = [], 0, 0, i
            count += 1
            size += int(n)
        if len(sizes) > start:
            ranges.append(PlanRange(unit, start, len(sizes)))
    if ranges:
        plans.append(ShardPlan(f"{prefix}-{len(plans):06d}.tar", tuple(ranges)))
    return plans
