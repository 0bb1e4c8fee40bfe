"""Voice gender on voices of known gender: espeak-ng's male and female variants in three languages."""

import pytest

from processors.labelers.gender import GenderClassifier
from processors.tts import espeak
from tests.factories import chord_music


@pytest.mark.parametrize("voice,gender", [("en-us+m3", "male"), ("en-us+f2", "female"), ("en+m1", "male"),
                                          ("en+f3", "female"), ("de+m2", "male"), ("fr+f4", "female")])
def test_known_voices(voice, gender):
    got, confidence = GenderClassifier().classify(espeak("Hello, this recording has a voice of a known gender.", voice))
    assert got == gender and confidence >= 0.4


def test_no_label_without_a_voice():
    assert GenderClassifier().classify(chord_music(0.3))[0] is None
