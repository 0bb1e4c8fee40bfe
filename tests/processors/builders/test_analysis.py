"""Audio-analysis conversations and DPO pairs: answers say what the labels say; each rejected reply changes
exactly the labelled fact its kind names."""

import re

from hypothesis import given, settings

from processors.builders.analysis import OTHER_EVENTS, TOPICS, answer, conversation, dpo_pairs, load_questions
from processors.builders.pretrain import language_name
from schemas.labels import Event, Labels, Paralinguistic, Speakers, Transcript
from tests.processors.builders.test_pretrain import labels_st, seg


def test_a_conversation_asks_about_what_is_labelled_with_the_audio_first_and_no_system_prompt():
    labels = Labels(transcript=Transcript("please close the window", "manifest", language="de"),
                    speakers=Speakers(2, "d"), events=(Event("Rain", 0.7, "y"),))
    ex = conversation(seg(labels), max_turns=5)
    roles = [m["role"] for m in ex.messages]
    assert roles == ["user", "assistant"] * 4 and "system" not in roles
    assert ex.messages[0]["content"][0] == {"type": "audio", "audio": 0}
    assert all(c["type"] == "text" for m in ex.messages[1:] for c in m["content"])
    answers = {m["content"][0]["text"] for m in ex.messages if m["role"] == "assistant"}
    assert answers == {"I can hear rain.", "There are 2 speakers.", "The speech is in German.",
                       'The speaker says: "please close the window"'}
    assert sorted(ex.provenance["labels_used"]) == ["events", "speakers", "transcript", "transcript.language"]
    assert conversation(seg(Labels())) is None
    assert conversation(seg(labels, "seg-1")) == conversation(seg(labels, "seg-1"))            # deterministic
    questions = load_questions()
    assert set(questions) == set(TOPICS) and all(len(q) >= 3 for q in questions.values())
    # Plain speech is not asked what can be heard; anything more than speech is.
    speech = Labels(transcript=labels.transcript, events=(Event("Speech", 0.9, "y"), Event("Silence", 0.2, "y")))
    assert not any(t.startswith("events.") for t in conversation(seg(speech), max_turns=5).template.split("+"))
    dog = Labels(transcript=labels.transcript, events=(Event("Speech", 0.9, "y"), Event("Dog", 0.5, "y")))
    said = {c["text"] for m in conversation(seg(dog), max_turns=5).messages for c in m["content"] if c["type"] == "text"}
    assert "I can hear speech and dog." in said


@settings(max_examples=300, deadline=None)
@given(labels_st)
def test_chosen_is_grounded_and_rejected_changes_the_named_fact(labels):
    s = seg(labels)
    ex = conversation(s)
    if ex is not None:
        for q, a in zip(ex.messages[::2], ex.messages[1::2]):
            text = a["content"][0]["text"]
            assert text in {answer(t, labels)[0] for t in TOPICS if answer(t, labels)}
    for pair in dpo_pairs(s):
        assert pair.chosen != pair.rejected and pair.score["by"] == "labels"
        kind, rej = pair.rejected_kind, pair.rejected
        if kind == "hallucinated_event":
            present = {e.label.lower() for e in labels.events}
            fakes = [e for e in OTHER_EVENTS if e.lower() in rej.lower() and e.lower() not in present]
            assert fakes and pair.chosen.startswith("I can hear")
        elif kind == "wrong_count":
            n = int(re.search(r"(\d+|one)", rej).group(1).replace("one", "1"))
            assert n != labels.speakers.count and abs(n - labels.speakers.count) == 1
        elif kind == "wrong_language":
            assert language_name(labels.transcript.language) not in rej and rej.startswith("The speech is in ")
        elif kind == "wrong_emotion":
            assert not rej.endswith(f" {labels.paralinguistic.emotion}.")
        elif kind == "wrong_transcript":
            said, got = labels.transcript.text.split(), rej.split('"')[1].split()
            assert len(said) == len(got) and sum(a != b for a, b in zip(said, got)) == 1
        else:
            raise AssertionError(kind)


def test_each_kind_of_negative_is_made():
    labels = Labels(transcript=Transcript("we meet at noon today", "asr", language="en"),
                    speakers=Speakers(1, "d"), events=(Event("Speech", 0.9, "y"), Event("Rain", 0.4, "y")),
                    paralinguistic=Paralinguistic("p", emotion="sad"))
    kinds = {p.rejected_kind for i in range(40) for p in dpo_pairs(seg(labels, f"seg-{i}"), max_pairs=5)}
    assert kinds == {"hallucinated_event", "wrong_count", "wrong_language", "wrong_emotion", "wrong_transcript"}
    # Plain speech gets no pair about what can be heard, as its conversations get no such question.
    plain = Labels(transcript=labels.transcript, events=(Event("Speech", 0.9, "y"),))
    assert {p.rejected_kind for i in range(40) for p in dpo_pairs(seg(plain, f"seg-{i}"), max_pairs=5)} \
        == {"wrong_language", "wrong_transcript"}
