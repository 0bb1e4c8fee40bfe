"""A file written through ``atomic_file`` appears whole at its target or not at all, on a local disk and
on a store with no rename (fsspec's memory filesystem stands in for s3:// and gs://)."""

import fsspec
import pytest

from schemas.files import TMP_MARK, atomic_file


def test_a_local_file_is_written_beside_its_target_then_renamed(tmp_path):
    target = tmp_path / "sub" / "table.parquet"
    with atomic_file(str(target)) as local:
        assert local.startswith(str(target) + TMP_MARK)         # the same disk: the rename cannot cross devices
        with open(local, "wb") as f:
            f.write(b"whole")
        assert not target.exists()
    assert target.read_bytes() == b"whole" and sorted(p.name for p in target.parent.iterdir()) == ["table.parquet"]


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "table.parquet"
    with pytest.raises(OSError), atomic_file(str(target)) as local:
        with open(local, "wb") as f:
            f.write(b"part")
        raise OSError("No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_remote_file_is_uploaded_whole():
    fs = fsspec.filesystem("memory")
    with atomic_file("memory://bucket/out/table.parquet") as local:
        with open(local, "wb") as f:
            f.write(b"whole")
        assert not fs.exists("/bucket/out/table.parquet")
    assert fs.cat("/bucket/out/table.parquet") == b"whole"
    assert fs.ls("/bucket/out", detail=False) == ["/bucket/out/table.parquet"]
