"""numba's cache under concurrent first use and after a crash left a mismatched pair: the labelers that use
librosa (music, events, quality, speakers) never crash.

The tests run librosa from a copy of the package in a temporary folder, so its own ``__pycache__`` (where
numba caches by default, and where the crash's files stayed) can be cleared and planted without touching the
installed one."""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from processors import numba_cache

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# What each labeler that uses librosa runs on 10 s of noise, in a fresh process.
LABELERS = """
import numba.core.event as ev
compiled = []


class Compiles(ev.Listener):             # numba announces a compile only where no cache had it
    def on_start(self, event):
        compiled.append(event.data["dispatcher"].py_func.__qualname__)

    def on_end(self, event):
        pass


ev.register("numba:compile", Compiles())
import numpy as np
from processors.labelers.music import musical_key, tempo_bpm
from processors.labelers.events import EventParams, YamNet
from processors.labelers.quality import DnsMos
x = np.random.default_rng(0).standard_normal(160000).astype(np.float32) * 0.1
print(musical_key(x), tempo_bpm(x), YamNet(EventParams()).patches(x).shape, DnsMos().scores(x)[2] > 0)
from resemblyzer.audio import wav_to_mel_spectrogram
print(wav_to_mel_spectrogram(x).shape)
print("compiled", len(compiled))
"""
# librosa alone, as a user's process without audiomill would run it.
PLAIN = """
import numpy as np, librosa
x = np.random.default_rng(0).standard_normal(160000).astype(np.float32)
print(librosa.feature.chroma_stft(y=x, sr=16000, n_fft=4096, hop_length=2048).mean())
"""


@pytest.fixture(scope="module")
def librosa_copy(tmp_path_factory) -> Path:
    """A folder to put first on PYTHONPATH that holds a copy of librosa without any numba cache."""
    import librosa

    site = tmp_path_factory.mktemp("site")
    shutil.copytree(Path(librosa.__file__).parent, site / "librosa", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _run(code: str, site: Path, cache_home: Path, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    e.update(PYTHONPATH=f"{site}{os.pathsep}{ROOT}", XDG_CACHE_HOME=str(cache_home), **env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)


def _clear_in_tree(site: Path) -> None:
    for d in (site / "librosa").rglob("__pycache__"):
        for f in d.glob("*.nb[ci]"):
            f.unlink()


def test_cold_caches_under_concurrent_first_use_never_crash(librosa_copy, tmp_path):
    """Three processes at once run every labeler that uses librosa, twice from cold caches (librosa's own
    and the node's, cleared) and once from the node's cache the second round left; one process compiles
    and the others wait for it and start from its copy."""
    home = tmp_path / "cache"
    for round_ in ("cold", "cold", "warm"):
        if round_ == "cold":
            shutil.rmtree(home, ignore_errors=True)
            _clear_in_tree(librosa_copy)
        with ThreadPoolExecutor(3) as pool:
            done = list(pool.map(lambda _: _run(LABELERS, librosa_copy, home), range(3)))
        for p in done:
            assert p.returncode == 0, (round_, p.returncode, p.stderr[-2000:])
        labels = {p.stdout.rsplit("compiled", 1)[0] for p in done}
        assert len(labels) == 1, [p.stdout for p in done]                         # the same labels in each
        # Cold: one process compiled under the lock and the two others loaded what it published; warm: none.
        compiled = sorted(int(p.stdout.rsplit("compiled", 1)[1]) for p in done)
        assert compiled[:2] == [0, 0] and (compiled[2] > 0) == (round_ == "cold"), (round_, compiled)
        node = home / "audiomill" / "numba" / numba_cache.cache_root().name
        assert (node / "ready").is_dir()
        # Each process cached privately and removed its folder on exit; nothing was written beside librosa.
        assert not any((node / "proc").iterdir())
        assert not list((librosa_copy / "librosa").rglob("*.nbc"))


def test_a_mismatched_pair_left_beside_librosa_does_not_crash_the_next_run(librosa_copy, tmp_path):
    """Plant the pair numba#10128 leaves (a gufunc's kernel from one compile, its wrapper from another):
    plain librosa then segfaults on every run, and the labelers still work."""
    _clear_in_tree(librosa_copy)
    home = tmp_path / "cache"
    assert _run(PLAIN, librosa_copy, home).returncode == 0           # fills librosa's own __pycache__
    cache = librosa_copy / "librosa" / "core" / "__pycache__"
    kernel = sorted(cache.glob("pitch._pi_wrapper-*"))
    assert kernel, sorted(p.name for p in cache.iterdir())
    saved = {p.name: p.read_bytes() for p in kernel}
    for p in cache.glob("*pitch._pi_wrapper-*"):
        p.unlink()
    # Compiled again alone, the function gets another ABI tag: its new wrapper names another kernel symbol.
    assert _run(PLAIN, librosa_copy, home).returncode == 0
    for name, data in saved.items():
        (cache / name).write_bytes(data)
    crashed = _run(PLAIN, librosa_copy, home)
    assert crashed.returncode == -11, (crashed.returncode, crashed.stderr[-500:])   # the plant is the crash
    # A user's own NUMBA_CACHE_DIR naming a folder with the same pair is not read either.
    user = tmp_path / "user-numba"
    shutil.copytree(cache, user / "core", dirs_exist_ok=True)
    for attempt in range(2):
        p = _run(LABELERS, librosa_copy, home, NUMBA_CACHE_DIR=str(user))
        assert p.returncode == 0, (attempt, p.returncode, p.stderr[-2000:])
        assert "minor" in p.stdout or "major" in p.stdout, p.stdout


def test_every_process_caches_in_its_own_folder_and_dead_ones_are_swept(tmp_path):
    code = "import os, processors; print(os.environ['NUMBA_CACHE_DIR'])"
    e = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    # A child that inherits its parent's NUMBA_CACHE_DIR (as Ray workers inherit the driver's) takes its own.
    e["NUMBA_CACHE_DIR"] = "/inherited"
    folders = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(2)]
    assert len(set(folders)) == 2 and "/inherited" not in folders
    procs = Path(folders[0]).parent
    assert procs.parent.name.startswith("numba-") and not any(procs.iterdir())   # removed at exit
    # A killed process leaves its folder; the next process removes it, and leaves a live one's alone.
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = procs / f"{socket.gethostname()}-{dead.stdout.strip()}-abc"
    live = procs / f"{socket.gethostname()}-{os.getpid()}-abc"
    other_host = procs / f"elsewhere-{dead.stdout.strip()}-abc"
    for d in (stale, live, other_host):
        (d / "x").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, check=True, capture_output=True)
    assert not stale.exists() and live.exists() and other_host.exists()
