"""``manifest.json``, the commit record of every output layer (FORMAT.md): one writer for segments and
examples alike, written last and atomically, so an output without it is unfinished."""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any

import fsspec

from schemas.example import EXAMPLE_SCHEMA
from schemas.files import atomic_write
from schemas.segment import SEGMENT_SCHEMA

MANIFEST_SCHEMA = "audiomill.manifest/1"
RECORD_SCHEMAS = {"segments": SEGMENT_SCHEMA, "examples": EXAMPLE_SCHEMA}
CODE_VERSION = "audiomill 0.2.0"


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    name: str            # path relative to the output directory: "segments-000000.tar", "sft/eval/x.tar"
    bytes: int
    samples: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    layer: str                       # segments | examples
    name: str
    version: str
    config_hash: str
    summary: dict[str, Any]
    shards: tuple[ShardEntry, ...]
    parent_version: str | None = None
    code_version: str = CODE_VERSION

    def __post_init__(self) -> None:
        if self.layer not in RECORD_SCHEMAS:
            raise ValueError(f"layer {self.layer!r} is not one of {', '.join(RECORD_SCHEMAS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": MANIFEST_SCHEMA, "layer": self.layer, "record_schema": RECORD_SCHEMAS[self.layer],
                "name": self.name, "version": self.version, "parent_version": self.parent_version,
                "config_hash": self.config_hash, "code_version": self.code_version, "summary": self.summary,
                "shards": [dataclasses.asdict(s) for s in self.shards]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        schema = d.get("schema")
        family, _, number = str(schema).rpartition("/")
        ours, _, our_number = MANIFEST_SCHEMA.rpartition("/")
        if family == ours and number.isdigit() and int(number) > int(our_number):
            raise ValueError(f"manifest format {number} is newer than this audiomill reads ({MANIFEST_SCHEMA}): "
                             "upgrade audiomill to read it")
        if schema != MANIFEST_SCHEMA:
            raise ValueError(f"not a {MANIFEST_SCHEMA} manifest: schema={schema!r}")
        return cls(layer=d["layer"], name=d["name"], version=d["version"], config_hash=d["config_hash"],
                   summary=d["summary"], shards=tuple(ShardEntry(**s) for s in d["shards"]),
                   parent_version=d.get("parent_version"), code_version=d.get("code_version", ""))


def write_manifest(out: str, manifest: Manifest) -> None:
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(posixpath.join(out, "manifest.json"), text.encode())


def read_manifest(out: str) -> Manifest | None:
    """The manifest of the output at ``out``, or None when it has none (not started or unfinished)."""
    fs, path = fsspec.core.url_to_fs(out)
    target = posixpath.join(path, "manifest.json")
    if not fs.exists(target):
        return None
    return Manifest.from_dict(json.loads(fs.cat(target)))
