"""The automatic held-out split groups examples by content: every recording of a held-out word, every segment
of a held-out recording, in every stage, is on the held-out side; class labels are not grouped on."""

import random

from schemas.example import AudioRef, Example, assistant_turn, user_audio_turn
from trainer.holdout import content_keys, in_holdout, plan_holdout

LANGUAGES = ["english", "french", "german", "spanish"]


def _lid(stage: str, language: str, word: str, voice: int) -> Example:
    seg = f"seg-{language}-{word}-{voice}"
    ref = [AudioRef("audio0.flac", seg, 1.0)]
    prov = {"segments": [seg], "transcript": word}
    if stage == "pretrain":
        return Example(id=f"p-{seg}", stage="pretrain", task="lid", audio=ref, prompt="Language:", target=language,
                       provenance=prov)
    if stage == "sft":
        return Example(id=f"s-{seg}", stage="sft", task="lid", audio=ref, provenance=prov,
                       messages=[user_audio_turn("Which language?"), assistant_turn(language)])
    return Example(id=f"d-{seg}", stage="dpo", task="lid", audio=ref, provenance=prov, chosen=language,
                   rejected="english" if language != "english" else "german",
                   messages=[user_audio_turn("Which language?")])


def _asr(word: str, voice: int, source: str | None = None) -> Example:
    seg = f"seg-{word}-{voice}"
    return Example(id=f"a-{seg}", stage="pretrain", task="asr", audio=[AudioRef("audio0.flac", seg, 1.0)],
                   prompt="Transcribe:", target=f"<|en|>{word.title()}",
                   provenance={"segments": [seg], **({"sources": [source]} if source else {})})


def _word_set(n_words=40, voices=6):
    """Each of ``n_words`` words per language spoken by ``voices`` voices, in all three stages."""
    out = []
    for language in LANGUAGES:
        for w in range(n_words):
            for v in range(voices):
                out += [_lid(stage, language, f"{language[:2]}word{w}", v) for stage in ("pretrain", "sft", "dpo")]
    random.Random(0).shuffle(out)
    return out


def test_no_held_out_word_is_trained_on_in_any_stage_and_every_language_is_held_out():
    examples = _word_set()
    plan = plan_holdout(examples, share=0.1, seed=0)
    held = [e for e in examples if in_holdout(e, plan.keys)]
    train = [e for e in examples if not in_holdout(e, plan.keys)]
    assert 0.07 * len(examples) <= len(held) == plan.held_out <= 0.13 * len(examples)
    for stage in ("pretrain", "sft", "dpo"):
        held_words = {e.provenance["transcript"] for e in held if e.stage == stage}
        train_words = {e.provenance["transcript"] for e in train if e.stage == stage}
        assert held_words and not held_words & train_words, stage
    # One split for all stages: a word held out of SFT is held out of pretraining and DPO too.
    by_stage = [{e.provenance["transcript"] for e in held if e.stage == s} for s in ("pretrain", "sft", "dpo")]
    assert by_stage[0] == by_stage[1] == by_stage[2]
    # The answer (a language) is a class, not content: the held-out side has most languages, not one.
    assert len({e.target for e in held if e.stage == "pretrain"}) >= 3


def test_a_transcription_target_is_content_and_a_shared_source_joins_its_segments():
    # asr examples carry their words only as the target; each word is said in two source recordings, each of
    # which holds three different words.
    examples = [_asr(f"word{w}", v, source=f"rec{w // 3}-{v % 2}") for w in range(60) for v in range(4)]
    plan = plan_holdout(examples, share=0.1, seed=1)
    held = [e for e in examples if in_holdout(e, plan.keys)]
    train = [e for e in examples if not in_holdout(e, plan.keys)]
    assert held and train
    assert not {e.target.lower() for e in held} & {e.target.lower() for e in train}
    assert not {e.provenance["sources"][0] for e in held} & {e.provenance["sources"][0] for e in train}


def test_one_group_larger_than_twice_the_share_is_never_held_out_whole():
    # Every example shares one source: a single group, which must not become the held-out set.
    examples = [_asr(f"word{w}", 0, source="one-long-recording") for w in range(50)]
    plan = plan_holdout(examples, share=0.05, seed=0)
    assert plan.groups == 1 and plan.held_out == 0 and not plan.keys


def test_the_split_depends_on_the_seed_and_not_on_the_order_of_the_examples():
    examples = _word_set(n_words=20, voices=2)
    a = plan_holdout(examples, share=0.1, seed=0)
    assert plan_holdout(list(reversed(examples)), share=0.1, seed=0).keys == a.keys
    assert plan_holdout(examples, share=0.1, seed=5).keys != a.keys


def test_keys_name_the_source_and_the_spoken_content():
    ex = _lid("sft", "french", "maison", 2)
    same_word = _lid("pretrain", "french", "maison", 0)
    other = _lid("sft", "french", "jardin", 2)
    assert set(content_keys(ex)) & set(content_keys(same_word))
    assert not set(content_keys(ex)) & set(content_keys(other))
    chat = Example(id="c", stage="sft", task="voice_chat", audio=[AudioRef("audio0.flac", "tts-1", 2.0)],
                   messages=[user_audio_turn(""), assistant_turn("Paris.")], provenance={"instruction": "i-7"})
    chat2 = Example(id="c2", stage="sft", task="voice_chat", audio=[AudioRef("audio0.flac", "tts-2", 2.0)],
                    messages=[user_audio_turn(""), assistant_turn("Paris.")], provenance={"instruction": "i-7"})
    assert set(content_keys(chat)) & set(content_keys(chat2))
