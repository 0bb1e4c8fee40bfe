"""A reworded caption is kept only when it claims nothing the labels do not; sampled replies are scored
against labels and paired only past the margin."""

from processors.builders.caption import supported
from processors.builders.policy import rank, score_reply, stated_count
from schemas.labels import Event, Labels, Music, Paralinguistic, Speakers, Transcript

LABELS = Labels(transcript=Transcript("turn left at the bridge", "manifest", "en"),
                speakers=Speakers(1, "d"), paralinguistic=Paralinguistic("g", gender="female"),
                events=(Event("Speech", 0.9, "y"), Event("Dog", 0.6, "y")))
CAPTION = "A woman speaks English while dog can be heard."


def test_only_rewordings_the_labels_support_are_kept():
    assert supported("A woman is speaking English while a dog is heard.", CAPTION, LABELS)
    assert not supported("A woman is speaking English while a dog barks.", CAPTION, LABELS)   # barking: not labelled
    assert supported("In the background a dog is audible as a woman talks in English.", CAPTION, LABELS)
    assert not supported("A man speaks English while a dog is heard.", CAPTION, LABELS)          # wrong gender
    assert not supported("A woman speaks French while a dog is heard.", CAPTION, LABELS)         # other language
    assert not supported("A woman speaks English while a cat meows.", CAPTION, LABELS)        # an event not there
    assert not supported("Two women speak English near a dog.", CAPTION, LABELS)              # a count not labelled
    assert not supported("A woman speaks English at 120 BPM.", CAPTION, LABELS)               # a number not stated
    assert not supported("", CAPTION, LABELS) and not supported(" ".join(["woman"] * 40), CAPTION, LABELS)


def test_replies_are_scored_by_the_labels():
    assert score_reply("transcript", 'The speaker says: "turn left at the bridge"', LABELS) == 1.0
    assert 0 < score_reply("transcript", 'The speaker says: "turn right at the bridge"', LABELS) < 1
    assert score_reply("speakers", "There is one speaker.", LABELS) == 1.0
    assert score_reply("speakers", "There are 2 speakers.", LABELS) == 0.0 and stated_count("3 voices") == 3
    assert score_reply("language", "The speech is in English.", LABELS) == 1.0
    assert score_reply("language", "It is English or German.", LABELS) == 0.0
    vocab = ["Speech", "Dog", "Cat", "Siren"]
    assert score_reply("events", "I can hear speech and dog.", LABELS, vocab) == 1.0
    assert abs(score_reply("events", "I can hear speech, dog, cat and siren.", LABELS, vocab) - 2 / 3) < 1e-9
    assert score_reply("events", "I can hear nothing.", LABELS, vocab) == 0.0
    music = Labels(music=Music("m", tempo_bpm=120.0, key="A minor", instruments=("Piano",)))
    assert score_reply("music", "Piano in A minor at 121 BPM.", music) == 1.0
    assert abs(score_reply("music", "Piano in A minor at 90 BPM.", music) - 2 / 3) < 1e-9
    garbled = "itdent buenos the hear D n\ufffdgnalgu I can on the English. isqu from in cold"
    assert score_reply("language", garbled, LABELS) < 0.5 <= score_reply("language", "It is English.", LABELS)


def test_pairs_are_the_best_and_worst_reply_past_the_margin():
    assert rank([(1.0, "a"), (0.2, "b"), (0.6, "c")], 0.3, 0.5) == ((1.0, "a"), (0.2, "b"))
    assert rank([(1.0, "a"), (0.9, "b")], 0.3, 0.5) == "below_margin"
    assert rank([(0.4, "a"), (0.0, "b")], 0.3, 0.5) == "chosen_below_min"
    assert rank([(1.0, "a"), (1.0, "a ")], 0.3, 0.5) == "identical_samples"
