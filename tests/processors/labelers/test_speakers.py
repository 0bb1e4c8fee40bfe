"""Diarization: DER on hand-made turns, and on a two-voice TTS conversation with known turns."""

import numpy as np
import pytest

from processors.labelers.speakers import Diarizer, SpeakerParams, der
from processors.tts import espeak
from tests.factories import silence


def test_der_on_hand_made_turns():
    ref = [("A", 0.0, 2.0), ("B", 2.0, 4.0)]
    assert der(ref, [("x", 0.0, 2.0), ("y", 2.0, 4.0)]) == 0.0                    # names do not matter
    assert der(ref, [("x", 0.0, 4.0)]) == pytest.approx(0.5)                       # B confused for A
    assert der(ref, [("x", 0.0, 2.0)]) == pytest.approx(0.5)                       # B missed
    assert der(ref, [("x", 0.0, 2.0), ("y", 2.0, 4.0), ("z", 4.0, 5.0)]) == pytest.approx(0.25)   # false alarm


def test_a_two_voice_conversation():
    lines = ["Good morning, did you finish the report about the river?", "Almost, I still need the samples.",
             "They arrived yesterday, I will send them after lunch.", "Perfect, then we present it on Friday."]
    voices = ["en-us+m3", "en-us+f2"]
    parts, truth, t = [], [], 0.0
    for i, line in enumerate(lines):
        x = espeak(line, voices[i % 2])
        parts += [x, silence(0.8)]
        truth.append((voices[i % 2], t, t + len(x) / 16000))
        t += len(x) / 16000 + 0.8
    got = Diarizer(SpeakerParams()).diarize([("k", 0.0, np.concatenate(parts))])["k"]
    assert got.count == 2 and got.turns[0].speaker == "S0"
    assert der(truth, [(s.speaker, s.start_s, s.end_s) for s in got.turns]) < 0.3
