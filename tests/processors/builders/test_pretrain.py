"""Pretraining examples: every template renders, the choice is stable per segment, and every target says
what the labels say and nothing else (a property test over generated labels)."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.builders.pretrain import SPEECH_ONLY, TASKS, choose, language_name, load_templates, pretrain_examples
from schemas.labels import Event, Labels, Music, Paralinguistic, SpeakerTurn, Speakers, Transcript
from schemas.segment import Segment, Source

SOURCE = Source("c", "file:///a.wav", "ab" * 32, "CC0-1.0", "train")
EVENT_NAMES = ["Dog", "Bark", "Telephone", "Speech", "Music", "Piano", "Rain", "Silence", "Car", "Beep, bleep",
               "Vehicle horn, car horn, honking"]


def seg(labels: Labels, sid: str = "seg-1", dur: float = 8.0, extra: dict | None = None) -> Segment:
    return Segment(id=sid, source=SOURCE, start_s=0.0, end_s=dur, kind="speech", labels=labels, extra=extra or {})


def test_every_task_has_templates_with_versioned_ids_and_the_choice_is_stable():
    templates = load_templates()
    for task in TASKS:
        ids = [t.id for t in templates[task]]
        assert len(ids) >= 3 and len(set(ids)) == len(ids)
        assert all(re.fullmatch(rf"{task}\.v1\.\d+", i) for i in ids)
        assert all(t.text.strip() and ("{" not in t.text or task == "s2tt") for t in templates[task])
    assert all(t.text.format(language="French") != t.text for t in templates["s2tt"])
    picks = {choose(templates["asr"], f"seg-{i}/asr").id for i in range(200)}
    assert picks == {t.id for t in templates["asr"]}                       # every paraphrase gets used
    assert [choose(templates["asr"], f"seg-{i}/asr") for i in range(50)] == \
           [choose(templates["asr"], f"seg-{i}/asr") for i in range(50)]


def test_a_fully_labelled_segment_gives_every_task_with_its_target():
    labels = Labels(transcript=Transcript("he hoped there would be stew", "manifest", language="en"),
                    speakers=Speakers(1, "x", turns=(SpeakerTurn("S0", 0.2, 3.1),)),
                    events=(Event("Speech", 0.9, "y"), Event("Dog", 0.6, "y", 4.0, 5.5)),
                    paralinguistic=Paralinguistic("z", gender="male", emotion="happy"),
                    music=Music("m", tempo_bpm=119.7, key="A minor", instruments=("Piano",)))
    examples, rejects = pretrain_examples(seg(labels, extra={"translation": {"de": "er hoffte auf Eintopf"}}))
    got = {e.task: e.target for e in examples}
    assert rejects == []
    s2tt = next(e for e in examples if e.task == "s2tt")
    assert s2tt.target == "er hoffte auf Eintopf" and "German" in s2tt.prompt
    assert got["asr"] == "<|en|>he hoped there would be stew" and got["lid"] == "English"
    assert got["sound_events"] == "Speech; Dog" and got["speaker"] == "One speaker, male."
    assert got["emotion"] == "Happy." and got["music"] == "Tempo about 120 BPM; key A minor; instruments: Piano."
    assert got["timestamps"] == "speaker S0: 0.20-3.10 s; Dog: 4.00-5.50 s"
    assert got["caption"] == "A man speaks English and sounds happy while dog can be heard with piano music at about 120 BPM."
    for e in examples:
        assert e.stage == "pretrain" and e.audio[0].segment_id == "seg-1" and e.provenance["segments"] == ["seg-1"]
        assert e.provenance["license"] == ["CC0-1.0"] and e.template.startswith(e.task + ".v1.")


def test_a_translation_is_used_only_for_the_whole_utterance_it_came_with():
    manifest = Transcript("good morning", "manifest", language="en")
    cols = {"manifest": {"translation_fr": "bonjour", "speaker_age": "40"}}
    examples, _ = pretrain_examples(seg(Labels(transcript=manifest), extra=cols), tasks=("s2tt",))
    assert [(e.target, e.provenance["labels_used"]) for e in examples] == [("bonjour", ["transcript", "extra.translation"])]
    asr = Transcript("good morning", "whisper-base@ct2", language="en")              # a piece cut by VAD
    assert pretrain_examples(seg(Labels(transcript=asr), extra=cols), tasks=("s2tt",)) == ([], [("s2tt", "no translation")])
    same = {"translation": {"en": "good morning"}}                                   # not a translation
    assert pretrain_examples(seg(Labels(transcript=manifest), extra=same), tasks=("s2tt",))[0] == []


def test_sound_events_are_asked_only_where_there_is_more_than_speech():
    def events(*names):
        return pretrain_examples(seg(Labels(events=tuple(Event(n, 0.9 - i / 10, "y") for i, n in enumerate(names)))),
                                 tasks=("sound_events",))

    assert events("Speech") == ([], [("sound_events", "speech only")])
    assert events("Female speech, woman speaking", "Speech", "Silence")[1] == [("sound_events", "speech only")]
    assert [e.target for e in events("Speech", "Dog")[0]] == ["Speech; Dog"]
    assert [e.target for e in events("Music", "Silence")[0]] == ["Music; Silence"]


def test_a_segment_without_labels_gives_a_reason_per_task():
    examples, rejects = pretrain_examples(seg(Labels()))
    assert examples == [] and dict(rejects) == {
        "asr": "no transcript", "s2tt": "no translation", "lid": "no language", "sound_events": "no events", "speaker": "no speakers",
        "emotion": "no emotion label", "music": "no music label", "timestamps": "no timed labels",
        "caption": "no labels to describe"}


languages = st.sampled_from(["en", "de", "fr", "es", "zh", ""])
labels_st = st.builds(
    Labels,
    transcript=st.none() | st.builds(Transcript, text=st.text(st.characters(categories=["L", "Zs"]), max_size=40),
                                     by=st.just("asr"), language=languages),
    speakers=st.none() | st.builds(Speakers, count=st.integers(1, 4), by=st.just("d"),
                                   turns=st.lists(st.builds(SpeakerTurn, speaker=st.sampled_from(["S0", "S1"]),
                                                            start_s=st.floats(0, 10), end_s=st.floats(10, 20)),
                                                  max_size=3).map(tuple)),
    events=st.lists(st.builds(Event, label=st.sampled_from(EVENT_NAMES), score=st.floats(0, 1), by=st.just("e")),
                    max_size=4).map(tuple),
    paralinguistic=st.none() | st.builds(Paralinguistic, by=st.just("p"), gender=st.sampled_from(["", "male", "female"]),
                                         emotion=st.sampled_from(["", "happy", "sad", "angry"])),
    music=st.none() | st.builds(Music, by=st.just("m"), tempo_bpm=st.none() | st.floats(40, 200),
                                key=st.sampled_from(["", "C major", "E minor"]),
                                instruments=st.lists(st.sampled_from(["Piano", "Guitar"]), max_size=2, unique=True).map(tuple)),
)


@settings(max_examples=300, deadline=None)
@given(labels_st)
def test_every_target_agrees_with_its_labels(labels):
    examples, rejects = pretrain_examples(seg(labels))
    assert {e.task for e in examples} | {t for t, _ in rejects} == set(TASKS)
    for e in examples:
        t = e.target
        if e.task == "asr":
            assert t == f"<|{labels.transcript.language}|>{labels.transcript.text.strip()}"
        elif e.task == "lid":
            assert t == language_name(labels.transcript.language)
        elif e.task == "sound_events":
            assert t.split("; ") == list(dict.fromkeys(ev.label for ev in sorted(labels.events, key=lambda ev: -ev.score)))
            assert not set(t.split("; ")) <= SPEECH_ONLY
        elif e.task == "speaker":
            n = labels.speakers.count
            assert t.startswith("One speaker" if n == 1 else f"{n} speakers")
            g = labels.paralinguistic.gender if labels.paralinguistic and n == 1 else ""
            assert (g and t.endswith(f", {g}.")) or (not g and "male" not in t)
        elif e.task == "emotion":
            assert t == labels.paralinguistic.emotion.capitalize() + "."
        elif e.task == "music":
            m = labels.music
            assert ("BPM" in t) == bool(m.tempo_bpm) and ((m.key in t) if m.key else "key" not in t)
            assert all(i in t for i in m.instruments)
        elif e.task == "caption":
            words = t.lower()
            # Nothing the labels do not hold: a gender word only with that gender, a language only with it.
            p = labels.paralinguistic
            assert ("a man " in words) <= bool(p and p.gender == "male")
            assert ("a woman " in words) <= bool(p and p.gender == "female")
            for code in ("en", "de", "fr", "es", "zh"):
                name = language_name(code).lower()
                assert (f" {name}" in words) <= (labels.transcript is not None and labels.transcript.language == code)
            present = {ev.label.lower() for ev in labels.events} | {i.lower() for i in (labels.music.instruments if labels.music else ())}
            for name in sorted(present, key=len, reverse=True):   # "car" inside "vehicle horn, car horn" is that event
                words = words.replace(name, " ")
            named = {ev.lower() for ev in EVENT_NAMES if re.search(rf"\b{re.escape(ev.lower())}\b", words)}
            assert named <= {"music"}
        assert e.provenance["labels_used"]
