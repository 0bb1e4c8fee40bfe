"""Atomic file writes on any fsspec URL, shared by every writer of the output layers.

Local disks: the data goes to a unique temporary name beside the target, is flushed to disk, and is
renamed over the target: readers see the old file or the new one, never a part. Object stores (s3://,
gs://) have no rename: an upload becomes visible whole when it completes, so a reader never sees a part
there either, but a crash can leave the unique temporary object behind (its name ends in ``.tmp-…``).
A failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator

import fsspec
import fsspec.implementations.local

TMP_MARK = ".tmp-"


def is_local_fs(fs) -> bool:
    return isinstance(fs, fsspec.implementations.local.LocalFileSystem)


def atomic_write(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` through a unique temporary name and a rename."""
    fs, path = fsspec.core.url_to_fs(url)
    if is_local_fs(fs):
        _local_atomic_write(path, data)
        return
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        _quiet_remove(fs, tmp)
        raise


def _local_atomic_write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _quiet_remove(None, tmp)
        raise


@contextlib.contextmanager
def atomic_file(url: str) -> Iterator[str]:
    """A local path to write ``url``'s content to, streamed: beside the target under a temporary name on a
    local disk (renamed into place), else in a temporary folder (uploaded, then renamed). Nothing is left
    when the writing fails."""
    fs, path = fsspec.core.url_to_fs(url)
    if is_local_fs(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _quiet_remove(None, tmp)
            raise
        return
    with tempfile.TemporaryDirectory(prefix="audiomill-") as folder:
        local = os.path.join(folder, posixpath.basename(path))
        yield local
        atomic_put(local, url)


def atomic_put(local_file: str, url: str) -> None:
    """Move a finished local file to ``url`` (a rename on the same local disk, else an upload)."""
    fs, path = fsspec.core.url_to_fs(url)
    if is_local_fs(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        os.replace(local_file, path)
        return
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    try:
        fs.put_file(local_file, tmp)
        fs.mv(tmp, path)
    except BaseException:
        _quiet_remove(fs, tmp)
        raise
    finally:
        _quiet_remove(None, local_file)


def _quiet_remove(fs, path: str) -> None:
    try:
        if fs is None:
            os.remove(path)
        else:
            fs.rm(path)
    except (OSError, FileNotFoundError):
        pass
