"""Input listing: folders (recursive, with sidecar labels), manifests with a column mapping, and adapters
for the LibriSpeech layout, Common Voice TSV and ESC-50-style CSV. Local paths or any fsspec URL.

``list_inputs(source)`` → (items, rejects): every audio-named file found is either an ``InputItem`` or a
``Reject`` with its reason, so nothing found is lost.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import posixpath
from collections.abc import Iterator
from typing import Any

import fsspec

from schemas.reject import Reject

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a")
FORMATS = ("auto", "folder", "jsonl", "csv", "tsv", "librispeech", "commonvoice", "esc50")
KIND_HINTS = ("", "speech", "sound", "music", "mixed")
MANIFEST_COLUMNS = ("audio", "text", "language", "label", "duration", "speaker", "split")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One corpus to ingest. ``columns`` maps manifest fields (audio, text, language, label, duration,
    speaker, split) to the manifest's column names."""

    path: str
    format: str = "auto"
    corpus: str = ""
    license: str = "unknown"
    split: str = "train"
    kind: str = ""
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    audio_root: str = ""

    def resolved_format(self) -> str:
        if self.format != "auto":
            return self.format
        ext = posixpath.splitext(self.path.rstrip("/"))[1].lower()
        return {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}.get(ext, "folder")

    def corpus_name(self) -> str:
        if self.corpus:
            return self.corpus
        base = posixpath.basename(self.path.rstrip("/"))
        return posixpath.splitext(base)[0] if self.resolved_format() != "folder" else base


@dataclasses.dataclass(frozen=True)
class InputItem:
    """One input file with what its source says about it. Crosses Ray as ``to_row()``."""

    uri: str
    corpus: str
    license: str
    split: str
    kind: str = ""
    text: str = ""
    language: str = ""
    label: str = ""
    speaker: str = ""
    duration_s: float = -1.0          # from a manifest, checked against decoding; -1 = not given
    labels_json: str = ""             # extra labels from a .json sidecar or manifest row

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "InputItem":
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


class SourceError(ValueError):
    """A source that cannot be listed at all (missing path, unknown column): a config error."""


def check_source(spec: SourceSpec) -> list[str]:
    """Problems that make ``spec`` unusable, found without reading audio (for config validation)."""
    problems = []
    if spec.format not in FORMATS:
        problems.append(f"source {spec.path!r}: format {spec.format!r} is not one of {', '.join(FORMATS)}")
    if spec.kind not in KIND_HINTS:
        problems.append(f"source {spec.path!r}: kind {spec.kind!r} is not one of {', '.join(KIND_HINTS[1:])}")
    unknown = set(spec.columns) - set(MANIFEST_COLUMNS)
    if unknown:
        problems.append(f"source {spec.path!r}: unknown column mapping keys {sorted(unknown)}; "
                        f"known: {', '.join(MANIFEST_COLUMNS)}")
    try:
        fs, path = fsspec.core.url_to_fs(spec.path)
        if not fs.exists(path):
            problems.append(f"input {spec.path!r} does not exist")
    except (ImportError, ValueError, OSError) as e:
        problems.append(f"input {spec.path!r} cannot be opened: {e}")
    return problems


def list_inputs(spec: SourceSpec) -> tuple[list[InputItem], list[Reject]]:
    fmt = spec.resolved_format()
    fs, root = fsspec.core.url_to_fs(spec.path)
    lister = {
        "folder": _list_folder, "jsonl": _list_manifest, "csv": _list_manifest, "tsv": _list_manifest,
        "librispeech": _list_librispeech, "commonvoice": _list_commonvoice, "esc50": _list_esc50,
    }[fmt]
    items, rejects = [], []
    for entry in lister(spec, fs, root):
        (rejects if isinstance(entry, Reject) else items).append(entry)
    items.sort(key=lambda it: it.uri)
    return items, rejects


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def _base_item(spec: SourceSpec, uri: str, **fields: Any) -> InputItem:
    fields = {"kind": spec.kind, **fields}
    return InputItem(uri=uri, corpus=spec.corpus_name(), license=spec.license, split=spec.split, **fields)


# ---- folders ---------------------------------------------------------------------------------------

def _walk_local(root: str) -> Iterator[tuple[str, OSError | None]]:
    """Files under ``root``, following directory links once each (a link loop is visited once)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if d.lower().endswith(AUDIO_EXTENSIONS)]:
            path = os.path.join(dirpath, name)
            try:
                os.stat(path)
                yield path, None
            except OSError as e:
                yield path, e


def _list_folder(spec: SourceSpec, fs, root: str) -> Iterator[InputItem | Reject]:
    if _uri(fs, root) == root:  # local: walk ourselves to survive link loops and broken links
        if os.path.isfile(root):
            yield _base_item(spec, root)
            return
        found = _walk_local(root)
    else:
        found = ((p, None) for p in sorted(fs.find(root)))
    for path, err in found:
        if not path.lower().endswith(AUDIO_EXTENSIONS):
            continue
        uri = _uri(fs, path)
        if err is not None:
            detail = "symlink loop" if err.errno == 40 else f"{type(err).__name__}: {err.strerror}"
            yield Reject(uri=uri, stage="list", reason="unreadable", detail=detail)
            continue
        yield _base_item(spec, uri, **_sidecar_fields(fs, path))


def _sidecar_fields(fs, audio_path: str) -> dict[str, Any]:
    stem = posixpath.splitext(audio_path)[0]
    fields: dict[str, Any] = {}
    if fs.isfile(stem + ".txt"):
        fields["text"] = _read_text(fs, stem + ".txt").strip()
    if fs.isfile(stem + ".json"):
        try:
            side = json.loads(_read_text(fs, stem + ".json"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            side = None
        if isinstance(side, dict):
            for key in ("text", "language", "label", "speaker", "kind"):
                if isinstance(side.get(key), str):
                    fields[key] = side[key]
            if isinstance(side.get("labels"), dict):
                fields["labels_json"] = json.dumps(side["labels"], sort_keys=True)
    return fields


def _read_text(fs, path: str) -> str:
    with fs.open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


# ---- manifests -------------------------------------------------------------------------------------

_DEFAULT_COLUMNS = {"audio": "audio", "text": "text", "language": "language", "label": "label",
                    "duration": "duration", "speaker": "speaker", "split": "split"}


def _manifest_rows(spec: SourceSpec, fs, path: str) -> Iterator[dict[str, Any]]:
    text = _read_text(fs, path)
    fmt = spec.resolved_format()
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{spec.path}:{n}: invalid JSON: {e}") from None
                yield row
        return
    delimiter = "\t" if fmt in ("tsv", "commonvoice") else ","
    yield from csv.DictReader(io.StringIO(text), delimiter=delimiter)


def _resolve(fs, manifest_path: str, audio_root: str, rel: str) -> str:
    if "://" in rel or rel.startswith("/"):
        return rel
    base = audio_root or posixpath.dirname(manifest_path)
    return posixpath.normpath(posixpath.join(base, rel))


def _list_manifest(spec: SourceSpec, fs, path: str, columns: dict[str, str] | None = None,
                   audio_root: str = "") -> Iterator[InputItem | Reject]:
    cols = {**_DEFAULT_COLUMNS, **(columns or {}), **spec.columns}
    root = spec.audio_root or audio_root
    for row in _manifest_rows(spec, fs, path):
        if cols["audio"] not in row:
            raise SourceError(f"{spec.path}: no column {cols['audio']!r} for the audio path "
                              f"(columns: {sorted(row)}); set columns.audio")
        audio = _resolve(fs, path, root, str(row[cols["audio"]]))
        uri = _uri(fs, audio) if "://" not in audio else audio
        if "://" not in audio and not fs.exists(audio):
            yield Reject(uri=uri, stage="list", reason="missing", detail="listed in manifest, not found")
            continue
        dur = row.get(cols["duration"])
        extra = {k: v for k, v in row.items() if k not in cols.values()}
        yield InputItem(
            uri=uri, corpus=spec.corpus_name(), license=spec.license,
            split=str(row.get(cols["split"]) or spec.split), kind=spec.kind,
            text=str(row.get(cols["text"]) or ""), language=str(row.get(cols["language"]) or ""),
            label=str(row.get(cols["label"]) or ""), speaker=str(row.get(cols["speaker"]) or ""),
            duration_s=float(dur) if dur not in (None, "") else -1.0,
            labels_json=json.dumps({"manifest": extra}, sort_keys=True, default=str) if extra else "",
        )


def _list_commonvoice(spec: SourceSpec, fs, path: str) -> Iterator[InputItem | Reject]:
    """Common Voice: ``<lang>/<split>.tsv`` with clips under ``<lang>/clips/``."""
    columns = {"audio": "path", "text": "sentence", "language": "locale", "speaker": "client_id"}
    yield from _list_manifest(spec, fs, path, columns, posixpath.join(posixpath.dirname(path), "clips"))


def _list_esc50(spec: SourceSpec, fs, path: str) -> Iterator[InputItem | Reject]:
    """ESC-50: ``meta/esc50.csv`` (filename, fold, target, category, …) with clips under ``audio/``."""
    columns = {"audio": "filename", "label": "category"}
    root = posixpath.join(posixpath.dirname(posixpath.dirname(path)), "audio")
    for item in _list_manifest(spec, fs, path, columns, root):
        yield dataclasses.replace(item, kind=item.kind or "sound") if isinstance(item, InputItem) else item


def _list_librispeech(spec: SourceSpec, fs, root: str) -> Iterator[InputItem | Reject]:
    """LibriSpeech: ``<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` beside ``<utterance>.flac``."""
    for trans in sorted(p for p in fs.find(root) if p.endswith(".trans.txt")):
        folder = posixpath.dirname(trans)
        for line in _read_text(fs, trans).splitlines():
            utt, _, text = line.partition(" ")
            if not utt:
                continue
            audio = posixpath.join(folder, utt + ".flac")
            uri = _uri(fs, audio)
            if not fs.exists(audio):
                yield Reject(uri=uri, stage="list", reason="missing", detail="in transcript, not found")
                continue
            yield _base_item(spec, uri, text=text.strip().lower(), language="en",
                             speaker=utt.split("-")[0])
