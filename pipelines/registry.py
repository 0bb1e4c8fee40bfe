"""Dataset versions in a registry: a folder on any fsspec URL (a local path, ``s3://…``, ``gs://…``).

    REGISTRY/NAME/versions/<version>.json      the version record; it existing is what makes a version visible
    REGISTRY/NAME/data/<version>-<token>/      its files: shards, index, rejects, manifest, config, card
    REGISTRY/NAME/staging/<token>.json         a publish in progress (owner, start, heartbeat)

A version is ``NAME@<content hash>``: the first 16 hex of a sha256 over every shard's sha256 and the bytes
of ``index.parquet``, ``rejects.parquet`` and ``manifest.json`` (the card, plots and page are derived and
not hashed). Publishing copies an output under a fresh ``data/<version>-<token>/``, checks every copied
file against its sha256, and only then writes the record (the one final write). A crash at any step leaves
no record, so no version; the next publish removes data folders that no record names and whose publisher
is gone. Publishing the same content again returns the same version and copies nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import fsspec

from schemas.files import atomic_write
from schemas.manifest import Manifest

VERSION_SCHEMA = "audiomill.version/1"
HASHED = ("index.parquet", "rejects.parquet", "manifest.json")
EXTRA = ("README.md", "config.json", "index.html")
STALE_S = 3600.0


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says why."""


@dataclasses.dataclass(frozen=True)
class FileEntry:
    path: str
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Version:
    name: str
    version: str
    content_hash: str
    layer: str
    created: str
    data: str                          # folder of the files, relative to REGISTRY/NAME
    parents: tuple[str, ...]           # "NAME@VERSION" when published, else the manifest's "name@version"
    config_hash: str
    code_version: str
    config: dict[str, Any]
    summary: dict[str, Any]
    files: tuple[FileEntry, ...]
    raw_inputs: tuple[tuple[str, str], ...]     # (uri, sha256) of every raw file (segments layer)
    published_from: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema"] = VERSION_SCHEMA
        d["raw_inputs"] = [{"uri": u, "sha256": s} for u, s in self.raw_inputs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Version":
        if d.get("schema") != VERSION_SCHEMA:
            raise RegistryError(f"not a {VERSION_SCHEMA} record: schema={d.get('schema')!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["files"] = tuple(FileEntry(**f) for f in d["files"])
        kw["parents"] = tuple(d["parents"])
        kw["raw_inputs"] = tuple((r["uri"], r["sha256"]) for r in d["raw_inputs"])
        return cls(**kw)


def _fs(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/") or path


def sha256_of(fs, path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def output_files(out: str, manifest: Manifest) -> list[FileEntry]:
    """Every file of a finished output that a version holds, with its size and sha256 (shards from the
    manifest, after checking they are what it says)."""
    fs, root = _fs(out)
    entries = []
    for s in manifest.shards:
        entries.append(FileEntry(s.name, s.bytes, s.sha256))
    for name in HASHED + EXTRA:
        if fs.exists(posixpath.join(root, name)):
            n, h = sha256_of(fs, posixpath.join(root, name))
            entries.append(FileEntry(name, n, h))
    plots = posixpath.join(root, "plots")
    if fs.exists(plots):
        for p in sorted(fs.ls(plots, detail=False)):
            if p.endswith(".png"):
                n, h = sha256_of(fs, p)
                entries.append(FileEntry(f"plots/{posixpath.basename(p)}", n, h))
    return entries


def content_hash(files: list[FileEntry]) -> str:
    lines = sorted(f"{f.path} {f.sha256}" for f in files if f.path.endswith(".tar") or f.path in HASHED)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class Registry:
    def __init__(self, url: str):
        self.url = url.rstrip("/") or url
        self.fs, self.root = _fs(url)

    def _p(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url_of(self, *parts: str) -> str:
        return posixpath.join(self.url, *parts)

    # ---- reading -------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False)
                      if self.fs.exists(posixpath.join(p, "versions")))

    def versions(self, name: str | None = None) -> list[Version]:
        out = []
        for n in [name] if name else self.names():
            folder = self._p(n, "versions")
            if not self.fs.exists(folder):
                continue
            for p in sorted(self.fs.ls(folder, detail=False)):
                if p.endswith(".json"):
                    out.append(self._record(p))
        return sorted(out, key=lambda v: (v.name, v.created, v.version))

    def get(self, ref: str) -> Version:
        name, _, version = ref.partition("@")
        if not name or not version:
            raise RegistryError(f"{ref!r} is not NAME@VERSION")
        path = self._p(name, "versions", f"{version}.json")
        if not self.fs.exists(path):
            known = ", ".join(v.ref for v in self.versions(name)) or "none"
            raise RegistryError(f"{ref} is not in {self.url} (versions of {name}: {known})")
        return self._record(path)

    def _record(self, path: str) -> Version:
        """The version record at ``path``; one that is not a record (edited by hand) names its file."""
        try:
            return Version.from_dict(json.loads(self.fs.cat(path)))
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"{path}: not a readable version record ({type(e).__name__}: {e})"[:300]) from e

    def data_url(self, v: Version) -> str:
        return self.url_of(v.name, v.data)

    def children(self, ref: str) -> list[Version]:
        return [v for v in self.versions() if ref in v.parents]

    # ---- publishing ------------------------------------------------------------------------------------

    def publish(self, out: str, name: str = "", on_step: Callable[[str], None] | None = None,
                stale_s: float = STALE_S) -> tuple[Version, bool]:
        """(the version, whether it is new). ``on_step(step)`` is called before each step."""
        from schemas.manifest import read_manifest

        step = on_step or (lambda s: None)
        manifest = read_manifest(out)
        if manifest is None:
            raise RegistryError(f"{out} is not a finished output (no manifest.json)")
        name = name or manifest.name
        if not name or "/" in name or "@" in name or name.startswith("."):
            raise RegistryError(f"version name {name!r}: use letters, digits, '-', '_' and '.'")
        step("hash")
        files = output_files(out, manifest)
        digest = content_hash(files)
        version = digest[:16]
        record = self._p(name, "versions", f"{version}.json")
        if self.fs.exists(record):
            return self.get(f"{name}@{version}"), False
        self.clean(name, stale_s)
        token = uuid.uuid4().hex[:12]
        step("stage")
        marker = self._p(name, "staging", f"{token}.json")
        atomic_write(self.url_of(name, "staging", f"{token}.json"),       # never seen half-written by a cleaner
                     json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                                 "version": version}).encode())
        data = f"data/{version}-{token}"
        try:
            return self._publish(out, name, manifest, files, digest, data, marker, step)
        except BaseException:
            record = self._p(name, "versions", f"{version}.json")
            if not (self.fs.exists(record) and self.get(f"{name}@{version}").data == data):
                self._remove(self._p(name, data))    # a crash that runs no code is cleaned by the next publish
            self._rm(marker)
            raise

    def _publish(self, out: str, name: str, manifest: Manifest, files: list[FileEntry], digest: str, data: str,
                 marker: str, step: Callable[[str], None]) -> tuple[Version, bool]:
        version = digest[:16]
        record = self._p(name, "versions", f"{version}.json")
        src_fs, src_root = _fs(out)
        for f in files:
            step(f"copy {f.path}")
            blob = src_fs.cat(posixpath.join(src_root, f.path))
            if hashlib.sha256(blob).hexdigest() != f.sha256:
                raise RegistryError(f"{out}/{f.path} changed while publishing (sha256 differs); nothing was published")
            atomic_write(self.url_of(name, data, f.path), blob)
        step("verify")
        for f in files:
            n, h = sha256_of(self.fs, self._p(name, data, f.path))
            if (n, h) != (f.bytes, f.sha256):
                raise RegistryError(f"copy of {f.path} in {self.url} is not what was written; nothing was published")
        parents = self._parents(out, manifest)
        v = Version(name=name, version=version, content_hash=digest, layer=manifest.layer,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), data=data, parents=parents,
                    config_hash=manifest.config_hash, code_version=manifest.code_version,
                    config=self._config(out), summary=manifest.summary, files=tuple(files),
                    raw_inputs=self._raw_inputs(out, manifest), published_from=out)
        step("record")
        if self.fs.exists(record):                   # the same content, published meanwhile by another run
            self._remove(self._p(name, data))
            self._rm(marker)
            return self.get(f"{name}@{version}"), False
        atomic_write(self.url_of(name, "versions", f"{version}.json"),
                     (json.dumps(v.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
        step("cleanup")
        if self.get(v.ref).data != data:             # another run's record won the race: its copy is the version
            self._remove(self._p(name, data))
        self._rm(marker)
        return self.get(v.ref), True

    def _parents(self, out: str, manifest: Manifest) -> tuple[str, ...]:
        """The published versions of the outputs this one was made from: each input folder the job's config
        names is hashed as publish would hash it, so the parent is exact even when several versions share a
        name. An input that is gone, or not published here, is named as its manifest names it."""
        from schemas.manifest import read_manifest

        cfg = self._config(out)
        inputs = cfg.get("inputs") or ([cfg["input"]] if cfg.get("input") else [])
        named = [p for p in (manifest.parent_version or "").split(",") if p]
        found = []
        for i, url in enumerate(inputs):
            try:
                m = read_manifest(url)
            except (OSError, ValueError):
                m = None
            if m is None:                  # raw audio (curate's inputs), or an output that is gone
                continue
            ref = f"{m.name}@{content_hash(output_files(url, m))[:16]}"
            exists = self.fs.exists(self._p(m.name, "versions", f"{ref.split('@')[1]}.json"))
            found.append(ref if exists else f"{m.name}@{m.version}")
        return tuple(found) or tuple(named)

    @staticmethod
    def _config(out: str) -> dict[str, Any]:
        fs, root = _fs(out)
        path = posixpath.join(root, "config.json")
        return json.loads(fs.cat(path)) if fs.exists(path) else {}

    @staticmethod
    def _raw_inputs(out: str, manifest: Manifest) -> tuple[tuple[str, str], ...]:
        if manifest.layer != "segments":
            return ()
        from pipelines.card import read_table

        rows = read_table(posixpath.join(out, "index.parquet"))
        return tuple(sorted({(r["uri"], r["source_sha256"]) for r in rows}))

    # ---- cleaning up -------------------------------------------------------------------------------------

    def clean(self, name: str, stale_s: float = STALE_S) -> list[str]:
        """Remove data folders that no record names and whose publisher is gone (its staging marker is
        missing, of a dead process on this host, or older than ``stale_s``), and their markers."""
        data_root = self._p(name, "data")
        if not self.fs.exists(data_root):
            return []
        # Data folders are listed before the markers: a publisher writes its marker before its folder, so
        # every folder listed here whose publisher is alive has a marker the listing below sees.
        folders = self.fs.ls(data_root, detail=False)
        named = {v.data for v in self.versions(name)}
        live = set(self._publishing(name, stale_s))
        removed = []
        for p in folders:
            rel = f"data/{posixpath.basename(p.rstrip('/'))}"
            token = rel.rsplit("-", 1)[-1]
            if rel not in named and token not in live:
                self._remove(p)
                removed.append(rel)
        return removed

    def _publishing(self, name: str, stale_s: float = STALE_S) -> dict[str, dict]:
        """The publishes of ``name`` in progress: token → staging marker; the markers of dead ones go."""
        live = {}
        stage = self._p(name, "staging")
        for p in self.fs.ls(stage, detail=False) if self.fs.exists(stage) else []:
            try:
                held = json.loads(self.fs.cat(p))
            except (OSError, ValueError):
                held = {}
            if _alive(held, stale_s):
                live[posixpath.basename(p).removesuffix(".json")] = held
            else:
                self._rm(p)
        return live

    def _remove(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass              # removed meanwhile by another publisher's clean-up

    def _rm(self, path: str) -> None:
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            pass

    def gc(self, ref: str) -> None:
        """Delete a version, refused while another version names it as a parent or any publish is running."""
        v = self.get(ref)
        users = self.children(ref)
        if users:
            raise RegistryError(f"{ref} is the parent of {', '.join(u.ref for u in users)}; delete those first")
        # A publish in progress may be of a child of this version, whose record does not exist yet.
        folders = self.fs.ls(self.root, detail=False) if self.fs.exists(self.root) else []
        running = [(posixpath.basename(f.rstrip("/")), held) for f in folders
                   for held in self._publishing(posixpath.basename(f.rstrip("/"))).values()]
        if running:
            n, held = running[0]
            raise RegistryError(f"a publish is running in {self.url} ({n}, pid {held.get('pid')} on {held.get('host')}); "
                                f"run gc after it ends (what it writes may name {ref} as its parent)")
        self.fs.rm(self._p(v.name, "versions", f"{v.version}.json"))
        self._remove(self._p(v.name, v.data))


def _alive(held: dict, stale_s: float) -> bool:
    if not held:
        return False
    if held.get("host") == socket.gethostname():
        import psutil

        return psutil.pid_exists(int(held.get("pid", -1)))
    return time.time() - float(held.get("started", 0)) < stale_s
