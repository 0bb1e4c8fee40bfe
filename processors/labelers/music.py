"""Music labels of a music (or mixed) segment: tempo (librosa's beat tracker), key (Krumhansl–Schmuckler
profiles correlated with the mean chroma), and the instruments among the segment's AudioSet events.

    music_label(x, events) → Music(by="librosa@0.11.0", tempo_bpm=120.2, key="A minor", instruments=("Piano",))
"""

from __future__ import annotations

import numpy as np

from processors.numba_cache import safe_librosa
from schemas.labels import Event, Music

SR = 16000
PITCHES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Krumhansl & Kessler (1982) probe-tone profiles, from C.
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# YAMNet's class map: "Plucked string instrument" (134) to "Singing bowl" (209) are instruments.
INSTRUMENT_INDEX = range(134, 210)


def tempo_bpm(x: np.ndarray) -> float | None:
    librosa = safe_librosa()
    if len(x) < 4 * SR:
        return None
    onset = librosa.onset.onset_strength(y=x, sr=SR, hop_length=512)
    tempo = librosa.feature.tempo(onset_envelope=onset, sr=SR, hop_length=512)
    value = float(np.atleast_1d(tempo)[0])
    return round(value, 1) if value > 0 else None


def musical_key(x: np.ndarray) -> str:
    """The best-correlating of the 24 major and minor key profiles with the mean chroma: "A minor"."""
    librosa = safe_librosa()
    if len(x) < SR or float(np.max(np.abs(x))) < 1e-4:
        return ""
    chroma = librosa.feature.chroma_stft(y=x, sr=SR, n_fft=4096, hop_length=2048).mean(axis=1)
    if not np.isfinite(chroma).all() or chroma.std() == 0:
        return ""
    best = max(((np.corrcoef(chroma, np.roll(profile, shift))[0, 1], f"{PITCHES[shift]} {mode}")
                for shift in range(12) for profile, mode in ((MAJOR, "major"), (MINOR, "minor"))))
    return best[1]


def music_label(x: np.ndarray, events: tuple[Event, ...], instrument_names: set[str], by: str) -> Music:
    instruments = tuple(e.label for e in events if e.label in instrument_names)
    return Music(by=by, tempo_bpm=tempo_bpm(x), key=musical_key(x), instruments=instruments)
