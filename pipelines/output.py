"""The output directory of a job: whose it is, who is writing it, and what may be deleted in it.

- An OUTPUT_DIR must be new, empty, or hold only what audiomill writes there (its shards, index, rejects,
  manifest, ``_work/`` with audiomill's claim, the lock); anything else is a user's file, and the job
  refuses to run rather than risk it. It may not be, or lie inside, an input.
- One run at a time: a lock file names its owner (host, pid, process start) and is refreshed while the
  run lives. A lock whose process is gone, or that was not refreshed for ``stale_s``, is taken over.
- Only files that match what audiomill writes are ever deleted.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec

from schemas.files import TMP_MARK, atomic_write, is_local_fs

WORK = "_work"
LOCK = ".audiomill-lock"
CLAIM = "claim.json"
WRITER = "audiomill"
TOP_FILES = ("index.parquet", "rejects.parquet", "manifest.json", "README.md", "config.json", "index.html", LOCK)
PLOTS = "plots"
WORK_DIRS = {"units": r"[0-9a-f]+\.arrow", "parts": r"[0-9a-f]+\.tar", "labels": r"[0-9a-f]+\.arrow",
             "speakers": r"[0-9a-f]+\.arrow", "plan": r"[0-9a-f]+\.arrow", "rejects": r"[0-9a-f]+\.arrow",
             "examples": r"[0-9a-f]+\.(tar|arrow)",
             "index": r"[A-Za-z0-9_-]+-[0-9]{6}\.tar\.arrow"}     # a shard's index rows, by its pack task


class OutputError(RuntimeError):
    """The OUTPUT_DIR cannot be used as it is; the message says why and what to do."""


class OutputConflict(OutputError):
    """OUTPUT_DIR holds finished or unfinished work of another configuration."""


class OutputBusy(OutputError):
    """Another run is writing OUTPUT_DIR."""


def _tmp(name: str) -> str:
    return re.escape(name) + "(" + re.escape(TMP_MARK) + r"[0-9a-f]+)?"


class Output:
    """``stage_dirs``: folders (and their ``eval/``) that hold this layer's shards, for the examples layer."""

    def __init__(self, url: str, shard_prefix: str, stage_dirs: tuple[str, ...] = ()):
        self.url = url.rstrip("/") or url
        self.stage_dirs = stage_dirs
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self.local = is_local_fs(self.fs)
        if self.local:
            self.path = os.path.abspath(self.path)
        self.shard_re = re.compile(re.escape(shard_prefix) + r"-\d{6}\.tar(" + re.escape(TMP_MARK) + r"[0-9a-f]+)?")
        self.top_re = re.compile("|".join(_tmp(n) for n in TOP_FILES))

    def join(self, *parts: str) -> str:
        return posixpath.join(self.url, *parts)

    @property
    def work(self) -> str:
        return self.join(WORK)

    # ---- checks before any work ----------------------------------------------------------------------

    def check_apart_from(self, inputs: list[str]) -> None:
        """OUTPUT_DIR must not be, or lie inside, an input (its files would become inputs, or be deleted)."""
        if not self.local:
            for i in inputs:
                base = i.rstrip("/")
                if self.url == base or self.url.startswith(base + "/"):
                    raise OutputError(f"OUTPUT_DIR {self.url} is inside the input {i}; choose a folder outside it")
            return
        out = os.path.realpath(self.path)
        for i in inputs:
            if "://" in i and not i.startswith("file://"):
                continue
            root = os.path.realpath(i.removeprefix("file://"))
            if os.path.isfile(root):
                root = os.path.dirname(root) if root.lower().endswith((".jsonl", ".csv", ".tsv")) else root
            if out == root or out.startswith(root.rstrip("/") + "/"):
                raise OutputError(f"OUTPUT_DIR {self.url} is inside the input {i}; choose a folder outside it")

    def finished_or_free(self, digest: str, verb: str) -> dict | None:
        """Before a job starts: the summary of this configuration's finished output (the job is done), or
        None when OUTPUT_DIR may be written; OutputError when it holds another configuration's dataset, a
        manifest that cannot be read, or files audiomill did not write."""
        from pipelines.runtime import say
        from schemas.manifest import read_manifest

        try:
            manifest = read_manifest(self.url)
        except (ValueError, KeyError, OSError) as e:
            raise OutputError(f"{self.url} holds a manifest.json audiomill cannot read ({e}); "
                              f"{verb} into a new or empty folder") from None
        if manifest is not None:
            if manifest.config_hash != digest:
                raise OutputConflict(f"{self.url} already holds a dataset made with another configuration")
            say(f"{self.url} is already complete")
            return manifest.summary
        foreign = self.foreign_entries()
        if foreign:
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise OutputConflict(f"{self.url} holds files audiomill did not write ({', '.join(foreign[:5])}{more}); "
                                 f"{verb} into a new or empty folder")
        return None

    def foreign_entries(self) -> list[str]:
        """Entries of OUTPUT_DIR that audiomill did not write (empty for a new or empty folder)."""
        if not self.fs.exists(self.path):
            return []
        if not self.fs.isdir(self.path):
            raise OutputError(f"OUTPUT_DIR {self.url} is an existing file, not a folder")
        foreign = []
        for entry in sorted(self._names(self.path)):
            full = posixpath.join(self.path, entry)
            if entry == WORK and self.fs.isdir(full):
                foreign += [f"{WORK}/{e}" for e in self._foreign_work(full)]
            elif entry == PLOTS and self.fs.isdir(full):
                foreign += [f"{PLOTS}/{e}" for e in self._names(full) if not re.fullmatch(r"[a-z_]+\.png" + "(" + re.escape(TMP_MARK) + r"[0-9a-f]+)?", e)]
            elif entry in self.stage_dirs and self.fs.isdir(full):
                foreign += [f"{entry}/{e}" for e in self._foreign_stage(full)]
            elif not (self.shard_re.fullmatch(entry) or self.top_re.fullmatch(entry)) or self.fs.isdir(full):
                foreign.append(entry)
        return foreign

    def _foreign_stage(self, folder: str, held_out: bool = False) -> list[str]:
        foreign = []
        for entry in sorted(self._names(folder)):
            full = posixpath.join(folder, entry)
            if not held_out and entry == "eval" and self.fs.isdir(full):
                foreign += [f"eval/{e}" for e in self._foreign_stage(full, held_out=True)]
            elif not self.shard_re.fullmatch(entry) or self.fs.isdir(full):
                foreign.append(entry)
        return foreign

    def _names(self, path: str) -> list[str]:
        return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False)]

    def _foreign_work(self, work: str) -> list[str]:
        names = self._names(work)
        if not any(re.fullmatch(_tmp(CLAIM), n) for n in names):
            return names      # not a folder of ours (a claim still being written counts as ours)
        foreign = []
        for entry in sorted(names):
            full = posixpath.join(work, entry)
            if entry in WORK_DIRS and self.fs.isdir(full):
                pattern = re.compile(WORK_DIRS[entry] + "(" + re.escape(TMP_MARK) + r"[0-9a-f]+)?")
                foreign += [f"{entry}/{e}" for e in self._names(full) if not pattern.fullmatch(e)]
            elif not re.fullmatch(_tmp(CLAIM), entry):
                foreign.append(entry)
        return foreign

    def claimed_hash(self) -> str | None:
        target = posixpath.join(self.path, WORK, CLAIM)
        if not self.fs.exists(target):
            return None
        return json.loads(self.fs.cat(target)).get("config_hash")

    def finished_units(self) -> int:
        folder = posixpath.join(self.path, WORK, "units")
        return len(self.fs.glob(posixpath.join(folder, "*.arrow"))) if self.fs.exists(folder) else 0

    def claim(self, digest: str) -> bool:
        """Mark ``_work`` as this configuration's; True when resuming earlier work of it."""
        claimed = self.claimed_hash()
        if claimed == digest:
            return True
        if claimed is not None:
            if self.finished_units():
                raise OutputConflict(f"{self.url} holds unfinished work of another configuration; use a new "
                                     f"OUTPUT_DIR, or remove its {WORK}/ to start over")
            self.remove_work()       # a claim with nothing done: ours, and nothing of value in it
        atomic_write(posixpath.join(self.work, CLAIM),
                     json.dumps({"written_by": WRITER, "config_hash": digest}).encode())
        return False

    # ---- the lock ------------------------------------------------------------------------------------

    @contextmanager
    def lock(self, stale_s: float = 300.0) -> Iterator[None]:
        """Hold the output's lock for the run; refuse when a live run holds it."""
        try:
            self.fs.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create OUTPUT_DIR {self.url}: {e.strerror or e}") from None
        target = posixpath.join(self.path, LOCK)
        me = _owner()
        self._acquire(target, me, stale_s)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(target, me, stop, stale_s / 5), daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join(timeout=5)
            try:
                if self._read_lock(target).get("token") == me["token"]:
                    self.fs.rm(target)
            except (OSError, ValueError):
                pass

    def _acquire(self, target: str, me: dict, stale_s: float) -> None:
        for _ in range(3):
            if self._create_exclusive(target, me):
                return
            try:
                held = self._read_lock(target)
            except (OSError, ValueError):
                held = {}
            if held and not _is_stale(held, stale_s):
                raise OutputBusy(f"{self.url} is being written by pid {held.get('pid')} on {held.get('host')} "
                                 f"(since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(held.get('started', 0)))}); "
                                 f"wait for it to finish, or remove {LOCK} if that run is gone")
            try:
                self.fs.rm(target)          # a dead run's lock
            except FileNotFoundError:
                pass
        raise OutputBusy(f"{self.url}: could not take {LOCK}; another run keeps taking it")

    def _create_exclusive(self, target: str, me: dict) -> bool:
        data = json.dumps(me).encode()
        if self.local:
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            except OSError as e:
                raise OutputError(f"cannot write to OUTPUT_DIR {self.url}: {e.strerror or e}") from None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        # Object stores have no exclusive create: check, then write (a narrow race, documented in the README).
        if self.fs.exists(target):
            return False
        self.fs.pipe(target, data)
        return True

    def _read_lock(self, target: str) -> dict:
        return json.loads(self.fs.cat(target))

    def _heartbeat(self, target: str, me: dict, stop: threading.Event, every: float) -> None:
        while not stop.wait(every):
            try:
                if self._read_lock(target).get("token") != me["token"]:
                    return
                self.fs.pipe(target, json.dumps({**me, "heartbeat": time.time()}).encode())
            except (OSError, ValueError):
                return

    # ---- cleaning up -------------------------------------------------------------------------------

    def remove_work(self) -> None:
        """Delete ``_work``'s files that audiomill wrote, then its empty folders; anything else stays."""
        work = posixpath.join(self.path, WORK)
        if not self.fs.exists(work):
            return
        names = self._names(work)
        for entry in names:
            full = posixpath.join(work, entry)
            if entry in WORK_DIRS and self.fs.isdir(full):
                pattern = re.compile(WORK_DIRS[entry] + "(" + re.escape(TMP_MARK) + r"[0-9a-f]+)?")
                for name in self._names(full):
                    if pattern.fullmatch(name):
                        self.fs.rm(posixpath.join(full, name))
                self._rmdir(full)
        for entry in names:
            if re.fullmatch(_tmp(CLAIM), entry):
                self.fs.rm(posixpath.join(work, entry))
        self._rmdir(work)

    def _rmdir(self, path: str) -> None:
        if self.local:
            try:
                os.rmdir(path)
            except OSError:
                pass          # not empty: something not ours is in it
        elif not self.fs.ls(path):
            try:
                self.fs.rmdir(path)
            except (OSError, NotImplementedError):
                pass

    def remove_stale_shards(self, keep: set[str]) -> list[str]:
        """Shards of this prefix (and temporary files of ours) beside the new ones, from an earlier attempt;
        ``keep`` and the result are paths relative to OUTPUT_DIR."""
        removed = []
        folders = [""] + [d for s in self.stage_dirs for d in (s, f"{s}/eval")]
        for folder in folders:
            where = posixpath.join(self.path, folder) if folder else self.path
            if folder and not self.fs.isdir(where):
                continue
            for name in self._names(where):
                rel = posixpath.join(folder, name) if folder else name
                if self.shard_re.fullmatch(name) and rel not in keep and not self.fs.isdir(posixpath.join(where, name)):
                    self.fs.rm(posixpath.join(where, name))
                    removed.append(rel)
        return removed


def _owner() -> dict:
    import uuid

    import psutil

    me = psutil.Process()
    now = time.time()
    return {"written_by": WRITER, "host": socket.gethostname(), "pid": os.getpid(), "process_start": me.create_time(),
            "started": now, "heartbeat": now, "token": uuid.uuid4().hex}


def _is_stale(held: dict, stale_s: float) -> bool:
    if held.get("host") == socket.gethostname():
        import psutil

        try:
            proc = psutil.Process(int(held.get("pid", -1)))
            return abs(proc.create_time() - float(held.get("process_start", 0))) > 1.0
        except (psutil.Error, ValueError):
            return True
    return time.time() - float(held.get("heartbeat", 0)) > stale_s
