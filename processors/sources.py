"""Input listing: folders (recursive, with sidecar labels), manifests with a column mapping, and adapters
for the LibriSpeech layout, Common Voice TSV and ESC-50-style CSV. Local paths or any fsspec URL.

``list_inputs(source, limits)`` → ``Listing``: every audio-named file and every manifest row found is an
``InputItem`` or a ``Reject`` with its reason, so nothing found is lost; a sidecar that cannot be used
(not text, too long, invalid JSON, a label of the wrong type) is ignored and counted with its reason.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import posixpath
import stat
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec

from schemas.input import InputItem, display_uri
from schemas.labels import LabelError, Labels
from schemas.reject import Reject

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a")
FORMATS = ("auto", "folder", "jsonl", "csv", "tsv", "librispeech", "commonvoice", "esc50")
KIND_HINTS = ("", "speech", "sound", "music", "mixed")
MANIFEST_COLUMNS = ("audio", "text", "language", "label", "duration", "speaker", "split")
SIDECAR_FIELDS = ("text", "language", "label", "speaker", "kind")


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
class ListingParams:
    """Limits on what listing accepts (config section ``listing``)."""

    allowed_roots: list[str] = dataclasses.field(default_factory=list)   # [] → any path a manifest names
    max_text_chars: int = 10000       # a longer transcript is not a transcript
    max_sidecar_bytes: int = 1 << 20


@dataclasses.dataclass
class Listing:
    items: list[InputItem] = dataclasses.field(default_factory=list)
    rejects: list[Reject] = dataclasses.field(default_factory=list)
    ignored: Counter = dataclasses.field(default_factory=Counter)   # "sidecar: not_text" → count


class SourceError(ValueError):
    """A source that cannot be listed at all (missing path, unknown column): a config error."""


def check_source(spec: SourceSpec, where: str = "") -> list[str]:
    """Problems that make ``spec`` unusable, found without reading audio (for config validation)."""
    name = where or f"source {spec.path!r}"
    problems = []
    if spec.format not in FORMATS:
        problems.append(f"{name}: format {spec.format!r} is not one of {', '.join(FORMATS)}")
    if spec.kind not in KIND_HINTS:
        problems.append(f"{name}: kind {spec.kind!r} is not one of {', '.join(KIND_HINTS[1:])}")
    unknown = set(spec.columns) - set(MANIFEST_COLUMNS)
    if unknown:
        problems.append(f"{name}: unknown column mapping keys {sorted(unknown)}; known: {', '.join(MANIFEST_COLUMNS)}")
    if not spec.path:
        problems.append(f"{name}: path is empty")
        return problems
    try:
        fs, path = fsspec.core.url_to_fs(spec.path)
        if not fs.exists(path):
            problems.append(f"input {spec.path!r} does not exist")
    except (ImportError, ValueError, OSError) as e:
        problems.append(f"input {spec.path!r} cannot be opened: {e}"[:300])
    return problems


def list_inputs(spec: SourceSpec, limits: ListingParams = ListingParams()) -> Listing:
    fmt = spec.resolved_format()
    fs, root = fsspec.core.url_to_fs(spec.path)
    lister = {
        "folder": _list_folder, "jsonl": _list_manifest, "csv": _list_manifest, "tsv": _list_manifest,
        "librispeech": _list_librispeech, "commonvoice": _list_commonvoice, "esc50": _list_esc50,
    }[fmt]
    out = Listing()
    ctx = _Context(spec, fs, limits, out.ignored)
    for entry in lister(ctx, root):
        if isinstance(entry, InputItem):
            entry = _within_roots(entry, limits)
        (out.rejects if isinstance(entry, Reject) else out.items).append(entry)
    out.items.sort(key=lambda it: it.uri)
    return out


@dataclasses.dataclass
class _Context:
    spec: SourceSpec
    fs: Any
    limits: ListingParams
    ignored: Counter

    @property
    def local(self) -> bool:
        return _is_local_fs(self.fs)


def _is_local_fs(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _url(fs, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def _item(ctx: _Context, path: str, version: tuple[int, str], **fields: Any) -> InputItem:
    fields = {"kind": ctx.spec.kind, **fields}
    size, ver = version
    common = dict(corpus=ctx.spec.corpus_name(), license=ctx.spec.license, split=fields.pop("split", ctx.spec.split),
                  size=size, version=ver, **fields)
    if ctx.local:
        return InputItem.local(path, **common)
    return InputItem.remote(_url(ctx.fs, path), **common)


def _within_roots(item: InputItem, limits: ListingParams) -> InputItem | Reject:
    if not limits.allowed_roots:
        return item
    target = os.path.realpath(item.path) if "://" not in item.path else item.path
    for root in limits.allowed_roots:
        base = os.path.realpath(root) if "://" not in root else root.rstrip("/")
        if target == base or target.startswith(base.rstrip("/") + "/"):
            return item
    return Reject(uri=item.uri, stage="list", reason="outside_roots",
                  detail=f"not under listing.allowed_roots ({', '.join(limits.allowed_roots)})")


# ---- folders ---------------------------------------------------------------------------------------

def _walk_local(root: str) -> Iterator[tuple[str, os.stat_result | OSError]]:
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
                yield path, os.stat(path)
            except OSError as e:
                yield path, e


def _list_folder(ctx: _Context, root: str) -> Iterator[InputItem | Reject]:
    if ctx.local:  # walk ourselves to survive link loops and broken links, and to see non-regular files
        found = [(root, os.stat(root))] if os.path.isfile(root) else _walk_local(root)
        for path, st in found:
            if not path.lower().endswith(AUDIO_EXTENSIONS):
                continue
            if isinstance(st, OSError):
                detail = "symlink loop" if st.errno == 40 else f"{type(st).__name__}: {st.strerror}"
                yield Reject(uri=display_uri(path), stage="list", reason="unreadable", detail=detail)
            elif not stat.S_ISREG(st.st_mode):
                yield Reject(uri=display_uri(path), stage="list", reason="unreadable",
                             detail=f"not a regular file ({_file_kind(st.st_mode)})")
            else:
                yield _item(ctx, path, (st.st_size, str(st.st_mtime_ns)), **_sidecar_fields(ctx, path))
        return
    for path, info in sorted(ctx.fs.find(root, detail=True).items()):
        if path.lower().endswith(AUDIO_EXTENSIONS):
            yield _item(ctx, path, _remote_version(info), **_sidecar_fields(ctx, path))


def _file_kind(mode: int) -> str:
    return ("a directory" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket")


def _remote_version(info: dict) -> tuple[int, str]:
    size = int(info.get("size") or -1)
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated", "created"):
        if info.get(key) not in (None, ""):
            return size, str(info[key])
    return size, ""


def _sidecar_fields(ctx: _Context, audio_path: str) -> dict[str, Any]:
    stem = posixpath.splitext(audio_path)[0]
    fields: dict[str, Any] = {}
    text = _read_sidecar(ctx, stem + ".txt")
    if text is not None:
        ok, value = _check_text(text.strip(), ctx.limits)
        if ok:
            fields["text"] = value
        else:
            ctx.ignored[f"sidecar .txt: {value}"] += 1
    raw = _read_sidecar(ctx, stem + ".json")
    if raw is not None:
        try:
            fields.update(_parse_json_sidecar(raw, ctx))
        except LabelError as e:
            ctx.ignored[f"sidecar .json: {e}"[:120]] += 1
    return fields


def _read_sidecar(ctx: _Context, path: str) -> str | None:
    """A sidecar's text, None when there is none; a sidecar that is not UTF-8 text or too big is counted."""
    try:
        if ctx.local:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                return None
            size = st.st_size
        else:
            if not ctx.fs.isfile(path):
                return None
            size = ctx.fs.size(path)
    except OSError:
        return None
    kind = posixpath.splitext(path)[1]
    if size > ctx.limits.max_sidecar_bytes:
        ctx.ignored[f"sidecar {kind}: larger than listing.max_sidecar_bytes"] += 1
        return None
    with (open(path, "rb") if ctx.local else ctx.fs.open(path, "rb")) as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        ctx.ignored[f"sidecar {kind}: not UTF-8 text"] += 1
        return None


def _check_text(text: str, limits: ListingParams) -> tuple[bool, str]:
    """(True, text) for usable transcript text, else (False, why)."""
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text) or "\ufffd" in text:
        return False, "not text (control characters)"
    if len(text) > limits.max_text_chars:
        return False, f"longer than listing.max_text_chars ({len(text)} > {limits.max_text_chars})"
    return True, text


def _strict_constant(name: str) -> float:
    raise LabelError(f"{name} is not JSON")


def _parse_json_sidecar(raw: str, ctx: _Context) -> dict[str, Any]:
    try:
        side = json.loads(raw, parse_constant=_strict_constant)
    except json.JSONDecodeError as e:
        raise LabelError(f"invalid JSON ({e.msg})") from None
    if not isinstance(side, dict):
        raise LabelError(f"not an object ({type(side).__name__})")
    fields: dict[str, Any] = {}
    for key in SIDECAR_FIELDS:
        if key in side:
            if not isinstance(side[key], str):
                raise LabelError(f"{key}: expected text, got {type(side[key]).__name__}")
            fields[key] = side[key]
    if "text" in fields:
        ok, why = _check_text(fields["text"].strip(), ctx.limits)
        if not ok:
            raise LabelError(f"text: {why}")
        fields["text"] = fields["text"].strip()
    if fields.get("kind", "") not in KIND_HINTS:
        raise LabelError(f"kind {fields['kind']!r} is not one of {', '.join(KIND_HINTS[1:])}")
    labels = side.get("labels", {})
    if not isinstance(labels, dict):
        raise LabelError("labels: expected an object")
    known = {k: v for k, v in labels.items() if k in Labels.KINDS}
    other = {k: v for k, v in labels.items() if k not in Labels.KINDS}
    if known:
        fields["labels"] = Labels.from_dict(known, "labels")
    if other:
        fields["extra_json"] = json.dumps(other, sort_keys=True, allow_nan=False)
    return fields


# ---- manifests -------------------------------------------------------------------------------------

_DEFAULT_COLUMNS = {"audio": "audio", "text": "text", "language": "language", "label": "label",
                    "duration": "duration", "speaker": "speaker", "split": "split"}


class _BadRow(ValueError):
    pass


_REST = "\0rest"      # where csv puts the fields of a row beyond its header


def _manifest_rows(ctx: _Context, path: str) -> Iterator[tuple[int, dict[str, Any] | _BadRow]]:
    """(line number, row or why the row is bad). The manifest is UTF-8, with or without a BOM; bytes that
    are not UTF-8 are kept as escapes, so a non-UTF-8 file name in it still names the file."""
    with (open(path, "rb") if ctx.local else ctx.fs.open(path, "rb")) as f:
        text = f.read().decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    fmt = ctx.spec.resolved_format()
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_constant=_strict_constant)
            except (json.JSONDecodeError, LabelError) as e:
                yield n, _BadRow(f"invalid JSON: {getattr(e, 'msg', e)}")
                continue
            yield n, row if isinstance(row, dict) else _BadRow(f"not an object: {line.strip()[:40]!r}")
        return
    delimiter = "\t" if fmt in ("tsv", "commonvoice") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, restkey=_REST)
    for row in reader:
        n = reader.line_num
        rest = row.get(_REST)
        if rest is not None:
            yield n, _BadRow(f"{len(reader.fieldnames) + len(rest)} fields for a header of "
                             f"{len(reader.fieldnames)}: quote values that hold {delimiter!r}")
        else:
            yield n, row


def _resolve(manifest_path: str, audio_root: str, rel: str) -> str:
    if rel.startswith("file://"):
        return posixpath.normpath(rel[len("file://"):])
    if "://" in rel or rel.startswith("/"):
        return rel
    base = audio_root or posixpath.dirname(manifest_path)
    return posixpath.normpath(posixpath.join(base, rel))


def _row_item(ctx: _Context, path: str, cols: dict[str, str], root: str, n: int,
              row: dict[str, Any]) -> InputItem | Reject:
    where = f"{display_uri(_url(ctx.fs, path))}:{n}"
    audio = row.get(cols["audio"])
    if not isinstance(audio, str) or not audio.strip():
        return Reject(uri=where, stage="list", reason="bad_manifest_row",
                      detail=f"{cols['audio']!r} is empty or not text: {audio!r}"[:200])
    fields: dict[str, Any] = {}
    for key in ("text", "language", "label", "speaker", "split"):
        value = row.get(cols[key])
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            return Reject(uri=where, stage="list", reason="bad_manifest_row",
                          detail=f"{cols[key]!r} is not text: {value!r}"[:200])
        if value != display_uri(value):
            return Reject(uri=where, stage="list", reason="bad_manifest_row", detail=f"{cols[key]!r} is not UTF-8")
        fields[key] = value
    if "text" in fields:
        ok, why = _check_text(fields["text"], ctx.limits)
        if not ok:
            return Reject(uri=where, stage="list", reason="bad_manifest_row", detail=f"{cols['text']!r}: {why}")
    dur = row.get(cols["duration"])
    if dur not in (None, ""):
        try:
            value = float(dur)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(dur, bool) or not math.isfinite(value) or value < 0:
            return Reject(uri=where, stage="list", reason="bad_manifest_row",
                          detail=f"{cols['duration']!r} is not a number of seconds: {dur!r}"[:200])
        fields["duration_s"] = value
    target = _resolve(path, root, audio)
    extra = {k: v for k, v in row.items() if k not in cols.values()}
    if extra:
        try:
            fields["extra_json"] = json.dumps({"manifest": extra}, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError, UnicodeEncodeError):
            return Reject(uri=where, stage="list", reason="bad_manifest_row", detail="extra columns are not JSON")
    if "://" in target:
        return InputItem.remote(target, corpus=ctx.spec.corpus_name(), license=ctx.spec.license,
                                split=fields.pop("split", ctx.spec.split), kind=ctx.spec.kind, **fields)
    version = _stat_version(ctx, target)
    if isinstance(version, Reject):
        return version
    return _item(ctx, target, version, **fields)


def _stat_version(ctx: _Context, target: str) -> tuple[int, str] | Reject:
    uri = display_uri(_url(ctx.fs, target))
    if ctx.local:
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return Reject(uri=uri, stage="list", reason="missing", detail="listed in manifest, not found")
        except OSError as e:
            return Reject(uri=uri, stage="list", reason="unreadable", detail=f"{type(e).__name__}: {e.strerror}")
        if not stat.S_ISREG(st.st_mode):
            return Reject(uri=uri, stage="list", reason="unreadable",
                          detail=f"not a regular file ({_file_kind(st.st_mode)})")
        return st.st_size, str(st.st_mtime_ns)
    try:
        return _remote_version(ctx.fs.info(target))
    except FileNotFoundError:
        return Reject(uri=uri, stage="list", reason="missing", detail="listed in manifest, not found")


def _list_manifest(ctx: _Context, path: str, columns: dict[str, str] | None = None,
                   audio_root: str = "") -> Iterator[InputItem | Reject]:
    cols = {**_DEFAULT_COLUMNS, **(columns or {}), **ctx.spec.columns}
    root = ctx.spec.audio_root or audio_root
    checked = False
    for n, row in _manifest_rows(ctx, path):
        if isinstance(row, _BadRow):
            yield Reject(uri=f"{display_uri(_url(ctx.fs, path))}:{n}", stage="list", reason="bad_manifest_row",
                         detail=str(row))
            continue
        if not checked:
            checked = True
            if cols["audio"] not in row:
                raise SourceError(f"{ctx.spec.path}: no column {cols['audio']!r} for the audio path "
                                  f"(columns: {sorted(map(str, row))}); set columns.audio")
        yield _row_item(ctx, path, cols, root, n, row)


def _list_commonvoice(ctx: _Context, path: str) -> Iterator[InputItem | Reject]:
    """Common Voice: ``<lang>/<split>.tsv`` with clips under ``<lang>/clips/``."""
    columns = {"audio": "path", "text": "sentence", "language": "locale", "speaker": "client_id"}
    yield from _list_manifest(ctx, path, columns, posixpath.join(posixpath.dirname(path), "clips"))


def _list_esc50(ctx: _Context, path: str) -> Iterator[InputItem | Reject]:
    """ESC-50: ``meta/esc50.csv`` (filename, fold, target, category, …) with clips under ``audio/``."""
    columns = {"audio": "filename", "label": "category"}
    root = posixpath.join(posixpath.dirname(posixpath.dirname(path)), "audio")
    for item in _list_manifest(ctx, path, columns, root):
        yield dataclasses.replace(item, kind=item.kind or "sound") if isinstance(item, InputItem) else item


def _list_librispeech(ctx: _Context, root: str) -> Iterator[InputItem | Reject]:
    """LibriSpeech: ``<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` beside ``<utterance>.flac``."""
    for trans in sorted(p for p in ctx.fs.find(root) if p.endswith(".trans.txt")):
        folder = posixpath.dirname(trans)
        with ctx.fs.open(trans, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        for line in lines:
            utt, _, text = line.partition(" ")
            if not utt:
                continue
            audio = posixpath.join(folder, utt + ".flac")
            version = _stat_version(ctx, audio)
            if isinstance(version, Reject):
                yield dataclasses.replace(version, detail="in transcript, not found") if version.reason == "missing" \
                    else version
                continue
            yield _item(ctx, audio, version, text=text.strip().lower(), language="en", speaker=utt.split("-")[0])
