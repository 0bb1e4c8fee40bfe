"""The input record: one listed input file and what its source says about it (crosses Ray into ingest)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

from schemas import arrow
from schemas.labels import Labels


def display_uri(path: str) -> str:
    """A path as records show it: bytes of a local name that are not UTF-8 are escaped as ``\\xNN``
    (``'caf\\udce9.wav'`` from ``os.listdir`` → ``'caf\\\\xe9.wav'``); any other path is unchanged."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclasses.dataclass(frozen=True, slots=True)
class InputItem:
    uri: str                      # as records show it (display_uri)
    location: bytes               # what to open: os.fsencode(local path), or the URL's UTF-8 bytes
    corpus: str
    license: str
    split: str
    kind: str = ""
    text: str = ""
    language: str = ""
    label: str = ""
    speaker: str = ""
    duration_s: float = -1.0      # from a manifest, checked against decoding; -1 = not given
    size: int = -1                # bytes when listed; -1 = unknown
    version: str = ""             # the file's identity when listed (mtime in ns, or an ETag)
    labels: Labels = Labels()     # from a .json sidecar's "labels" object
    extra_json: str = ""          # free-form metadata (manifest columns, other sidecar keys): JSON text

    @classmethod
    def local(cls, path: str, **fields: Any) -> "InputItem":
        return cls(uri=display_uri(path), location=os.fsencode(path), **fields)

    @classmethod
    def remote(cls, url: str, **fields: Any) -> "InputItem":
        return cls(uri=url, location=url.encode("utf-8"), **fields)

    @property
    def path(self) -> str:
        """What to open: a local path (non-UTF-8 bytes kept as surrogate escapes) or a URL."""
        return os.fsdecode(self.location)

    @property
    def unit(self) -> str:
        """The input's unit id: a hash of what it is (location) and which version of it was listed (size,
        mtime or ETag), so a file changed between a crash and the rerun is a new unit, redone."""
        key = self.location + b"\0" + f"{self.size}\0{self.version}".encode()
        return hashlib.sha256(key).hexdigest()[:24]

    def label_count(self) -> int:
        """How many labels the input carries (transcript, class label, speaker, sidecar labels)."""
        return sum(bool(v) for v in (self.text, self.label, self.speaker)) + len(self.labels.kinds())

    def to_row(self) -> dict[str, Any]:
        return arrow.to_row(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "InputItem":
        return arrow.from_row(cls, row)
