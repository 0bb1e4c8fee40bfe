"""Stage ``ingest``: one decode pass per input (``processors/ingest.py``) on an actor that holds the VAD
model. It writes the input's part tar and its completion marker, and returns the ``UnitResult``."""

from __future__ import annotations

import dataclasses
import io
import os
import posixpath
import tempfile
import uuid

import fsspec
import pyarrow as pa
import pyarrow.ipc

from pipelines.stage import StageFn
from processors.errors import MediaError
from processors.ingest import IngestParams, ingest
from processors.shards import TarSink
from schemas import arrow
from schemas.files import TMP_MARK, atomic_put, atomic_write, is_local_fs
from schemas.input import InputItem
from schemas.reject import Reject
from schemas.unit import UnitResult


@dataclasses.dataclass(frozen=True)
class IngestJob:
    params: IngestParams
    work: str            # the job's _work url


def marker_url(work: str, unit: str) -> str:
    return posixpath.join(work, "units", unit + ".arrow")


def write_marker(work: str, result: UnitResult) -> None:
    buf = io.BytesIO()
    table = arrow.to_table([result], UnitResult)
    with pa.ipc.new_file(buf, table.schema) as w:
        w.write_table(table)
    atomic_write(marker_url(work, result.unit), buf.getvalue())


def read_marker(url: str) -> UnitResult:
    return arrow.from_table(UnitResult, marker_table(url))[0]


def marker_table(url: str, columns: list[str] | None = None) -> pa.Table:
    """A marker's row as an Arrow table (only ``columns``, when given)."""
    with fsspec.open(url, "rb") as f:
        table = pa.ipc.open_file(pa.BufferReader(f.read())).read_all()
    return table.select(columns) if columns else table


class IngestStage(StageFn):
    params: IngestJob

    def setup(self) -> None:
        from processors.vad import SileroVad

        self.vad = SileroVad()

    def __call__(self, items: list[InputItem]) -> list[UnitResult]:
        return [self.one(item) for item in items]

    def one(self, item: InputItem) -> UnitResult:
        work = self.params.work
        part = posixpath.join(work, "parts", item.unit + ".tar")
        fs, part_path = fsspec.core.url_to_fs(part)
        if is_local_fs(fs):
            os.makedirs(os.path.dirname(part_path), exist_ok=True)
            tmp = f"{part_path}{TMP_MARK}{uuid.uuid4().hex[:12]}"
        else:
            tmp = os.path.join(tempfile.gettempdir(), f"audiomill-part-{item.unit}{TMP_MARK}{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as f:
                sink = TarSink(f)
                result = ingest(item, self.params.params, self.vad, sink)
                sink.close()
            if result.segments:
                atomic_put(tmp, part)
                result = dataclasses.replace(result, part=part)
            else:
                result = UnitResult(unit=item.unit, uri=item.uri, reject=Reject(
                    item.uri, "ingest", "no_segments", "no speech or sound segment survived"))
        except MediaError as e:
            result = UnitResult(unit=item.unit, uri=item.uri, reject=Reject(item.uri, "ingest", e.reason, e.detail))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        write_marker(work, result)
        return result.lean()
