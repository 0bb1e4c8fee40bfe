"""Decontamination finds an eval clip's audio however it was re-encoded or cut, and an eval transcript's
long word sequences; nothing else."""

import numpy as np

from processors.audio import load_standardised
from processors.decontaminate import contaminated, eval_set, ngrams
from tests.factories import ffmpeg, silence, tts, write


def test_re_encoded_trimmed_contained_and_quoted_eval_material_is_found(tmp_path):
    said = "The committee will meet again next Tuesday to review the budget for the harbour."
    clip = np.concatenate([silence(0.3), tts(said, "en-us"), silence(0.3)])
    other = tts("Bright lanterns floated over the water while the band played on the pier.", "en-us+f2")
    write(tmp_path / "eval.wav", clip)
    mp3 = ffmpeg(tmp_path / "eval.wav", tmp_path / "copy.mp3", "-ar", "22050", "-b:a", "48k", "-filter:a", "volume=0.5")
    re_encoded = load_standardised(str(mp3))
    segments = [
        ("seg-copy", re_encoded, ""),                                              # mp3, 22 kHz, −6 dB
        ("seg-trimmed", clip[int(0.5 * 16000):-int(0.4 * 16000)], ""),             # cut at both ends
        ("seg-inside", np.concatenate([other, silence(0.5), clip, silence(0.5), other]), ""),
        ("seg-quote", other, "as they said the committee will meet again next tuesday to review it"),
        ("seg-clean", other, "bright lanterns floated over the water"),
        ("seg-short-text", tts("Good morning.", "en-us"), "good morning"),
    ]
    found = contaminated(segments, [eval_set("my-eval", [("e1", clip, said), ("e2", silence(1.0), "good morning")])])
    assert found == {"seg-copy": ("my-eval", "eval_audio"), "seg-trimmed": ("my-eval", "eval_audio"),
                     "seg-inside": ("my-eval", "eval_audio"), "seg-quote": ("my-eval", "eval_transcript"),
                     "seg-short-text": ("my-eval", "eval_transcript")}
    assert contaminated(segments, []) == {}
    assert contaminated([("seg-clean", other, "")], [eval_set("e", [("e1", clip, said)])]) == {}


def test_ngrams_are_of_normalised_words():
    assert ngrams("Hello, World! Again", 2) == {("hello", "world"), ("world", "again")}
    assert ngrams("Hi.", 8) == {("hi",)} and ngrams("", 3) == set()
