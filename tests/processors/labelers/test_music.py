"""Tempo and key on music rendered with fluidsynth from MIDI whose tempo and key are known."""

import subprocess

import numpy as np
import pytest
import soundfile as sf

from pipelines.demo import SOUNDFONT, _midi
from processors.labelers.music import musical_key, music_label, tempo_bpm
from schemas.labels import Event


def _render(tmp_path, notes, bpm, program=0):
    mid = tmp_path / f"m{bpm}.mid"
    mid.write_bytes(_midi(notes, program, tempo_us=int(60e6 / bpm)))
    wav = tmp_path / f"m{bpm}.wav"
    subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.7", "-r", "16000", "-F", str(wav), str(SOUNDFONT), str(mid)],
                   check=True, stdout=subprocess.DEVNULL)
    return sf.read(wav, dtype="float32")[0].mean(axis=1)


def _beats(n, pitches):
    """A note on every beat (480 ticks), the scale's pitches in turn, a chord root every bar."""
    notes = []
    for b in range(n):
        notes.append((b * 480, 400, pitches[b % len(pitches)]))
        if b % 4 == 0:
            notes.append((b * 480, 1800, pitches[0] - 12))
    return notes


@pytest.mark.parametrize("bpm", [90, 120, 140])
def test_tempo_within_4_percent(tmp_path, bpm):
    x = _render(tmp_path, _beats(48, [60, 64, 67, 72]), bpm)
    assert tempo_bpm(x) == pytest.approx(bpm, rel=0.04)


@pytest.mark.parametrize("tonic,mode,pitches", [("C", "major", [60, 62, 64, 65, 67, 69, 71, 72, 67, 64]),
                                                ("A", "minor", [57, 59, 60, 62, 64, 65, 67, 69, 64, 60]),
                                                ("G", "major", [55, 57, 59, 60, 62, 64, 66, 67, 62, 59])])
def test_key_of_a_tonal_melody(tmp_path, tonic, mode, pitches):
    x = _render(tmp_path, _beats(40, pitches), 110)
    assert musical_key(x) == f"{tonic} {mode}"


def test_instruments_come_from_the_events():
    x = np.zeros(16000 * 5, np.float32)
    m = music_label(x, (Event("Music", 0.9, "y"), Event("Piano", 0.4, "y"), Event("Dog", 0.2, "y")), {"Piano"}, "b")
    assert m.instruments == ("Piano",) and m.by == "b"
