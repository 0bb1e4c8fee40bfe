"""Voice chat and mixed scenes: the user turn is speech only, and it says the instruction (checked with
ASR); a scene question is mixed at the SNR asked for and answered from the scene's labels."""

import json

import numpy as np
import pytest

from processors.builders.analysis import answer, load_questions
from processors.builders.chat import Voice, keywords, layered_scene, load_instructions, mix, mixed_scene, voice_chat
from schemas.labels import Event, Labels, Speakers
from tests.factories import chord_music, tts
from tests.processors.builders.test_pretrain import seg


@pytest.fixture(scope="module")
def whisper():
    from processors.labelers.asr import AsrParams, Whisper

    return Whisper(AsrParams(language="en"))


def test_the_default_instruction_set_loads_and_a_bad_line_is_named(tmp_path):
    items = load_instructions()
    assert len(items) >= 20 and len({i["id"] for i in items}) == len(items)
    bad = tmp_path / "i.jsonl"
    bad.write_text(json.dumps({"id": "a", "instruction": "x", "answer": "y"}) + "\n{nope\n")
    with pytest.raises(ValueError, match=r"i.jsonl:2: not JSON"):
        load_instructions(bad)
    bad.write_text(json.dumps({"id": "a", "instruction": "", "answer": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"i.jsonl:1: needs non-empty"):
        load_instructions(bad)


def test_a_voice_chat_turn_is_the_spoken_instruction_and_the_answer_is_the_reply(whisper):
    from processors.labelers.asr import disagreement

    item = load_instructions()[0]
    for voice in (Voice("espeak", "en-us+f2", 150), Voice("flite", "slt", 150), Voice("piper", "joe", 140)):
        ex, (audio,) = voice_chat(item, voice)
        again = voice_chat(item, voice)
        assert again[0] == ex and np.array_equal(again[1][0], audio), f"{voice.id} is not deterministic"
        user, reply = ex.messages
        assert user["role"] == "user" and user["content"] == [{"type": "audio", "audio": 0}]
        assert reply["content"][0]["text"] == item["answer"] and ex.task == "voice_chat" and ex.stage == "sft"
        assert 0.5 < len(audio) / 16000 <= 30 and ex.audio[0].duration_s == pytest.approx(len(audio) / 16000, abs=1e-3)
        heard = whisper.transcribe([audio])[0].text
        assert disagreement(item["instruction"], heard) <= 0.3, heard
        assert ex.provenance["keywords"] == ["paris"]
    with pytest.raises(ValueError, match="not one of"):
        voice_chat(item, Voice("festival"))


def test_an_answers_keywords_are_what_the_instruction_does_not_already_say():
    assert keywords({"instruction": "What is the capital of France?", "answer": "The capital of France is Paris."}) \
        == ["paris"]
    assert keywords({"instruction": "Wie viele Tage hat eine Woche?", "answer": "Eine Woche hat sieben Tage."}) \
        == ["sieben"]
    # Given keywords win; an answer that only repeats the question keeps its own content words.
    assert keywords({"instruction": "q", "answer": "a", "keywords": ["Shadow"]}) == ["shadow"]
    assert keywords({"instruction": "Say hello world.", "answer": "Hello world."}) == ["hello", "world"]
    for item in load_instructions():
        assert keywords(item), item["id"]


def test_the_mix_has_the_snr_asked_for_and_does_not_clip():
    rng = np.random.default_rng(0)
    command = (0.2 * rng.standard_normal(16000 * 2)).astype(np.float32)
    scene = (0.5 * rng.standard_normal(16000 * 1)).astype(np.float32)             # shorter: repeated
    for snr in (-5.0, 0.0, 10.0):
        out, cg, sg = mix(command, scene, snr)
        span = slice(8000, 8000 + len(command))
        bed = np.tile(scene, 4)[: len(out)][span] * sg
        measured = 20 * np.log10(np.sqrt(np.mean((cg * command) ** 2)) / np.sqrt(np.mean(bed ** 2)))
        assert measured == pytest.approx(snr, abs=0.01) and np.max(np.abs(out)) <= 0.99 + 1e-6
        assert np.allclose(out[span], cg * command + bed, atol=1e-5) and len(out) == len(command) + 16000


def test_a_mixed_scene_asks_about_the_scene_and_answers_from_its_labels(whisper):
    labels = Labels(events=(Event("Music", 0.8, "y"), Event("Piano", 0.6, "y")), speakers=Speakers(2, "d"))
    s = seg(labels, "seg-scene")
    scene = chord_music(6.0, seed=2)
    ex, (audio,) = mixed_scene(s, scene, Voice("espeak", "en-us", 150), snr_db=10.0)
    topic = ex.template.split(".")[1]
    assert ex.template.startswith("scene.") and len(audio) >= len(scene)     # all of the scene is heard
    assert ex.messages[0]["content"] == [{"type": "audio", "audio": 0}] and len(audio) <= 30 * 16000
    assert ex.messages[1]["content"][0]["text"] == answer(topic, labels)[0]
    assert ex.provenance["question"] in [q.text for q in load_questions(section="scene")[topic]] and ex.provenance["snr_db"] == 10.0
    heard = whisper.transcribe([audio])[0].text.lower()
    assert set(ex.provenance["question"].lower().strip("?").split()[:3]) <= set(heard.replace("?", "").split()), heard
    assert mixed_scene(seg(Labels(), "seg-x"), chord_music(3.0), Voice()) is None


def test_a_layered_scene_plays_sounds_and_talk_together_and_asks_about_both(whisper):
    sound = seg(Labels(events=(Event("Dog", 0.9, "y"), Event("Bark", 0.7, "y"))), "seg-dog")
    talk = seg(Labels(speakers=Speakers(2, "d"), events=(Event("Speech", 0.9, "y"),)), "seg-talk")
    dog = chord_music(4.0, seed=5) * 0.1
    voices = np.concatenate([tts("We should leave soon.", "en-us+m3"), tts("Yes, after lunch.", "en-us+f2")])
    ex, (audio,) = layered_scene(sound, dog, talk, voices, Voice("espeak", "en-us", 150), snr_db=5.0)
    assert ex.messages[0]["content"] == [{"type": "audio", "audio": 0}]
    assert ex.messages[1]["content"][0]["text"] == "I can hear dog and bark, while 2 people are talking."
    assert ex.provenance["segments"] == ["seg-dog", "seg-talk"] and len(audio) >= max(len(dog), len(voices))
    heard = whisper.transcribe([audio])[0].text.lower()
    assert "people" in heard or "voices" in heard, heard
    assert layered_scene(talk, voices, talk, voices, Voice(), 5.0) is None          # no sound besides speech
    assert layered_scene(sound, dog, sound, dog, Voice(), 5.0) is None              # nobody talking
