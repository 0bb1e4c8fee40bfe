"""Typed records ↔ Arrow rows, for records that cross a Ray boundary.

A record is a frozen dataclass whose fields are annotated with ``str``, ``int``, ``float``, ``bool``,
``bytes``, another record, ``X | None``, ``tuple[X, ...]`` or ``dict[str, str]``. ``arrow_schema(Record)``
turns those annotations into the record's one Arrow schema; ``to_row`` / ``from_row`` convert a record to
and from the plain row Arrow takes and gives (``pa.Table.from_pylist(rows, schema)`` / ``to_pylist()``).

    @dataclass(frozen=True)
    class Turn:
        speaker: str
        start_s: float
    arrow_schema(Turn) → schema(speaker: string, start_s: double)
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

import pyarrow as pa

R = TypeVar("R")

_SCALARS = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(), bytes: pa.binary()}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only X | None unions map to Arrow, not {tp}")
        return args[0]
    return tp


def arrow_type(tp: Any) -> pa.DataType:
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        return pa.list_(arrow_type(typing.get_args(tp)[0]))
    if origin is dict:
        key, value = typing.get_args(tp)
        return pa.map_(arrow_type(key), arrow_type(value))
    if dataclasses.is_dataclass(tp):
        return pa.struct([pa.field(f.name, arrow_type(_hints(tp)[f.name])) for f in _fields(tp)])
    if tp in _SCALARS:
        return _SCALARS[tp]
    raise TypeError(f"no Arrow type for {tp!r}")


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]


@functools.cache
def arrow_schema(cls: type) -> pa.Schema:
    return pa.schema([pa.field(f.name, arrow_type(_hints(cls)[f.name])) for f in _fields(cls)])


def to_row(record: Any) -> dict[str, Any]:
    """A record → a plain dict of Python values that ``arrow_schema(type(record))`` accepts."""
    return {f.name: _plain(getattr(record, f.name)) for f in _fields(type(record))}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_row(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def from_row(cls: type[R], row: dict[str, Any]) -> R:
    """The inverse of ``to_row``: a plain dict (as ``to_pylist()`` gives it) → a record of ``cls``."""
    hints = _hints(cls)
    return cls(**{f.name: _typed(hints[f.name], row[f.name]) for f in _fields(cls) if f.name in row})


def _typed(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        item = typing.get_args(tp)[0]
        items = [_typed(item, v) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        _, item = typing.get_args(tp)
        pairs = value.items() if isinstance(value, dict) else value   # Arrow maps come back as pairs
        return {k: _typed(item, v) for k, v in pairs}
    if dataclasses.is_dataclass(tp):
        return from_row(tp, value)
    return value


def to_table(records: list[Any], cls: type) -> pa.Table:
    return pa.Table.from_pylist([to_row(r) for r in records], schema=arrow_schema(cls))


def from_table(cls: type[R], table: pa.Table) -> list[R]:
    return [from_row(cls, row) for row in table.to_pylist()]
