"""numba's on-disk cache, safe for many processes on one node, and for caches a crash left behind.

numba caches a ``@guvectorize(cache=True)`` function as two files, the kernel's and the gufunc's. Two
processes that compile one such function at once can each write one of the pair, which then names different
symbols, and every later load segfaults (numba#10128, open; librosa#1998). librosa compiles a dozen of them
when it is imported, and its pitch, beat, onset and utils code calls them.

So no two processes ever write into one cache folder:

- each process caches into a private folder (``NUMBA_CACHE_DIR``), removed when it exits, and the folders of
  processes that died are swept by the next one;
- a node keeps one finished cache, built by a single process under a file lock and published by a rename,
  and a process that imports librosa starts from a copy of it: librosa's import and a first tempo and key
  then take ~2 s, against ~25 s compiled from nothing;
- cache files a crashed run left beside librosa's sources (its ``__pycache__``) are never read.

    librosa = safe_librosa()      # instead of ``import librosa``, before anything that imports it
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import socket
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

# The librosa modules that hold cached numba functions; the eager ones compile when imported.
LIBROSA_NUMBA_MODULES = ("librosa.util.utils", "librosa.util.matching", "librosa.filters", "librosa.feature.utils",
                         "librosa.sequence", "librosa.beat", "librosa.onset", "librosa.core.notation",
                         "librosa.core.audio", "librosa.core.pitch", "librosa.core.spectrum", "librosa.core.constantq")

_private: dict[int, Path] = {}        # pid → this process's cache folder (a forked child makes its own)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def cache_root() -> Path:
    """This node's numba caches for this numba, Python and librosa: ``~/.cache/audiomill/numba/<key>``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    key = f"numba-{_version('numba')}-py{sys.version_info[0]}{sys.version_info[1]}-librosa-{_version('librosa')}"
    return Path(base) / "audiomill" / "numba" / key


def isolate() -> Path:
    """Point numba at a new, empty cache folder of this process's own; idempotent per process. Cheap (no
    copy), so that every process can do it before anything imports librosa. Returns the folder."""
    pid = os.getpid()
    if pid in _private:
        return _private[pid]
    root = cache_root()
    try:
        (root / "proc").mkdir(parents=True, exist_ok=True)
        procs = root / "proc"
    except OSError:                   # an unwritable home: private folders in the temp dir, nothing shared
        procs = Path(tempfile.gettempdir()) / f"audiomill-numba-{os.getuid()}"
        procs.mkdir(parents=True, exist_ok=True)
    _sweep(procs)
    private = Path(tempfile.mkdtemp(prefix=f"{socket.gethostname()}-{pid}-", dir=procs))
    _private[pid] = private
    atexit.register(shutil.rmtree, private, True)
    os.environ["NUMBA_CACHE_DIR"] = str(private)      # the compiler reloads numba's config from the environment
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.core.config.CACHE_DIR = str(private)
    return private


def safe_librosa() -> ModuleType:
    """librosa, imported with this process's private cache; the first process on a node compiles librosa's
    numba functions under a lock and publishes them as the node's cache, and the others wait and copy it."""
    private = isolate()
    if "librosa" in sys.modules:
        return sys.modules["librosa"]
    root = cache_root()
    ready = root / "ready"
    try:
        if not ready.is_dir():
            with open(root / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not ready.is_dir():
                    _warm()
                    _publish(private, ready)
        if "librosa" not in sys.modules:      # not the process that just built it
            shutil.copytree(ready, private, dirs_exist_ok=True)
    except OSError:
        pass                      # no lock or no node cache here (an unwritable filesystem): compile privately
    import librosa

    return librosa


def _warm() -> None:
    """Compile what librosa caches: the eager functions at import, the lazy ones the labelers call."""
    import importlib

    import numpy as np

    for name in LIBROSA_NUMBA_MODULES:
        importlib.import_module(name)
    import librosa

    x = np.random.default_rng(0).standard_normal(5 * 16000).astype(np.float32)
    onset = librosa.onset.onset_strength(y=x, sr=16000, hop_length=512)
    librosa.feature.tempo(onset_envelope=onset, sr=16000, hop_length=512)
    librosa.beat.beat_track(onset_envelope=onset, sr=16000, hop_length=512)
    librosa.onset.onset_detect(onset_envelope=onset, sr=16000, hop_length=512)
    librosa.feature.chroma_stft(y=x, sr=16000, n_fft=4096, hop_length=2048)


def _publish(private: Path, ready: Path) -> None:
    """Copy this process's cache to a temporary folder and rename it into place: a reader sees all or none."""
    tmp = Path(tempfile.mkdtemp(prefix=".ready-", dir=ready.parent))
    shutil.copytree(private, tmp, dirs_exist_ok=True)
    try:
        os.rename(tmp, ready)
    except OSError:                   # another node sharing this folder published first
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep(procs: Path) -> None:
    """Remove the private folders of this host's processes that are gone (killed ones never clean up)."""
    host = socket.gethostname()
    for d in procs.iterdir():
        name_host, _, rest = d.name.rpartition("-")[0].rpartition("-")
        if name_host != host or not rest.isdigit():
            continue
        try:
            os.kill(int(rest), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass                      # alive, another user's
