"""Deterministic WebDataset tars: fixed member order, mtime, uid/gid and mode; written to a temporary
name and renamed; read back with member names checked.

A sample is a key and its members, e.g. ``("seg-ab12", [("json", b"{…}"), ("flac", b"fLaC…")])``; the tar
holds ``seg-ab12.json`` and ``seg-ab12.flac`` in that order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator

import fsspec

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


def write_tar(fileobj, samples: Iterable[Sample]) -> list[WrittenSample]:
    """Write samples into an open binary file; return where each landed."""
    written = []
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            validate_key(key)
            start = tar.offset
            for ext, data in members:
                tar.addfile(_info(f"{key}.{ext}", len(data)), io.BytesIO(data))
            written.append(WrittenSample(key, start, tar.offset - start))
    return written


def tar_bytes(samples: Iterable[Sample]) -> tuple[bytes, list[WrittenSample]]:
    buf = io.BytesIO()
    written = write_tar(buf, samples)
    return buf.getvalue(), written


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


def atomic_write(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` through a temporary name and a rename (atomic on local disks)."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Which samples go into shard ``name``: a list of (part url, keys) in order."""

    name: str
    parts: list[tuple[str, list[str]]]


def plan_shards(units: list[tuple[str, list[tuple[str, int]]]], target_bytes: int, max_samples: int,
                prefix: str) -> list[ShardPlan]:
    """Pack ordered units (part url, [(key, bytes)]) into size-targeted shards, in order.

    A shard closes before the sample that would push it past ``target_bytes`` or ``max_samples``.
    """
    plans: list[ShardPlan] = []
    parts: list[tuple[str, list[str]]] = []
    size = count = 0

    def close() -> None:
        nonlocal parts, size, count
        if count:
            plans.append(ShardPlan(f"{prefix}-{len(plans):06d}.tar", parts))
        parts, size, count = [], 0, 0

    for url, samples in units:
        for key, nbytes in samples:
            if count and (size + nbytes > target_bytes or count >= max_samples):
                close()
            if not parts or parts[-1][0] != url:
                parts.append((url, []))
            parts[-1][1].append(key)
            size += nbytes
            count += 1
    close()
    return plans
