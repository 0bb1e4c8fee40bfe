import math

import pytest
import torch

from trainer.losses import IGNORE, DPOLoss, count_targets, nll_sum, sequence_logprob, token_logprobs


def test_dpo_loss_on_hand_computed_numbers():
    # β = 0.5; chosen: policy -10, ref -12 → reward 1.0; rejected: policy -9, ref -8 → reward -0.5.
    # loss = -log σ(1.0 - (-0.5)) = log(1 + e^-1.5) = 0.201413
    losses, rc, rr = DPOLoss(beta=0.5)(torch.tensor([-10.0]), torch.tensor([-9.0]), torch.tensor([-12.0]),
                                       torch.tensor([-8.0]))
    assert losses.item() == pytest.approx(math.log1p(math.exp(-1.5)), abs=1e-6)
    assert rc.item() == pytest.approx(1.0) and rr.item() == pytest.approx(-0.5)
    # Equal policy and reference: zero margin, loss log 2.
    same = DPOLoss(0.1)(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3))[0]
    assert torch.allclose(same, torch.full((3,), math.log(2)))


def test_rpo_adds_the_chosen_replys_per_token_nll_and_pulls_its_likelihood_up():
    pc, pr, rc_, rr_ = torch.tensor([-10.0], requires_grad=True), torch.tensor([-9.0]), torch.tensor([-12.0]), torch.tensor([-8.0])
    tokens = torch.tensor([5])
    plain = DPOLoss(0.5)(pc, pr, rc_, rr_)[0]
    rpo = DPOLoss(0.5, rpo_alpha=2.0)(pc, pr, rc_, rr_, tokens)[0]
    assert rpo.item() == pytest.approx(math.log1p(math.exp(-1.5)) + 2.0 * 10.0 / 5, abs=1e-6)
    g_plain = torch.autograd.grad(plain.sum(), pc)[0]
    g_rpo = torch.autograd.grad(rpo.sum(), pc)[0]
    assert g_rpo.item() == pytest.approx(g_plain.item() - 2.0 / 5, abs=1e-6)   # a stronger push on log π(y_w)
    with pytest.raises(ValueError, match="token counts"):
        DPOLoss(0.5, rpo_alpha=1.0)(pc, pr, rc_, rr_)


def test_token_logprobs_pick_the_next_token_and_respect_the_mask():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]]))
    labels = torch.tensor([[IGNORE, 1, 2]])      # position 0 predicts label 1, position 1 predicts label 2
    logps, mask = token_logprobs(logits, labels)
    assert mask.tolist() == [[True, True]]
    assert logps[0].tolist() == pytest.approx([math.log(0.2), math.log(0.1)], abs=1e-6)
    assert sequence_logprob(logits, labels).item() == pytest.approx(math.log(0.2) + math.log(0.1), abs=1e-6)
    masked = torch.tensor([[IGNORE, IGNORE, 2]])
    assert sequence_logprob(logits, masked).item() == pytest.approx(math.log(0.1), abs=1e-6)
    assert count_targets(masked) == 1
    assert nll_sum(logits, masked).item() == pytest.approx(-math.log(0.1), abs=1e-5)


def test_scores_by_task_kind():
    from trainer.scoring import score_task

    asr = score_task("asr", ["the cat sat", "hello world"], ["the cat sit", "hello world"])
    assert asr["wer"] == pytest.approx(1 / 5) and asr["n"] == 2
    lid = score_task("lid", ["english", "french", "english", "german"], ["English.", "german", "english", "german"])
    assert lid["accuracy"] == 0.75 and lid["chance"] == 0.5
    ev = score_task("sound_events", ["Speech; Dog", "Beep, bleep", "Music"],
                    ["dog; speech", "Beep, bleep; Sound effect", "Speech"])
    # Order and case do not matter; a comma inside an AudioSet name is part of it.
    assert ev["f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3) and ev["accuracy"] == 0.0   # exact match: none
    # The best constant answer: "Speech; Dog" scores F1 1, 0, 0 → 1/3; "Music" 0, 0, 1 → 1/3.
    assert ev["chance_f1"] == pytest.approx(1 / 3)


def test_voice_chat_replies_are_judged_by_whether_they_answer_the_request():
    from trainer.scoring import headline_metric, score_task

    refs = ["The capital of France is Paris.", "A leap year has 366 days.", "Bees make honey and wax."]
    keys = [["paris"], ["366"], ["honey", "wax"]]
    # Reworded but right; right number, other words; one of two keywords (half is enough).
    right = score_task("voice_chat", refs, ["Paris is France's capital", "366, one more than usual", "Honey."], keys)
    assert right["grounded"] == 1.0 and right["accuracy"] == 0.0 and headline_metric(right) == "grounded"
    # Fluent and on topic, but wrong: the capital named wrongly, the days miscounted, the products missing.
    wrong = score_task("voice_chat", refs, ["The capital of France is Lyon.", "A leap year has 365 days.",
                                            "Bees make a buzzing sound."], keys)
    assert wrong["grounded"] == 0.0
    # Answering every request the same way grounds one of three at best.
    assert wrong["chance_grounded"] == pytest.approx(1 / 3)
    assert "grounded" not in score_task("voice_chat", refs, refs)         # no keywords: exact match only


def test_an_analysis_chat_is_scored_under_the_kind_of_its_last_question():
    from schemas.example import AudioRef, Example, assistant_turn, user_audio_turn
    from trainer.scoring import eval_task

    def ex(task, template):
        return Example(id="e", stage="sft", task=task, audio=[AudioRef("audio0.flac", "s", 1.0)], template=template,
                       messages=[user_audio_turn("What language is being spoken?"), assistant_turn("English.")])

    assert eval_task(ex("analysis", "events.v1.2+language.v1.3")) == "analysis/language"
    assert eval_task(ex("analysis", "events.v1.4")) == "analysis/events"
    assert eval_task(ex("voice_chat", "espeak:en-us@160")) == "voice_chat"


def test_every_question_of_an_analysis_chat_is_scored_with_the_turns_before_it():
    from schemas.example import AudioRef, Example, assistant_turn, user_audio_turn
    from trainer.data import reference_answer
    from trainer.scoring import eval_items, eval_task

    msgs = [user_audio_turn("What language is being spoken?"), assistant_turn("The speech is in German."),
            {"role": "user", "content": [{"type": "text", "text": "What can you hear in this recording?"}]},
            assistant_turn("I can hear music.")]
    ex = Example(id="e", stage="sft", task="analysis", audio=[AudioRef("audio0.flac", "s", 1.0)], messages=msgs,
                 template="language.v1.2+events.v1.1")
    items = eval_items(ex, ["a"])
    assert [(eval_task(e), reference_answer(e), len(e.messages)) for e, _ in items] == [
        ("analysis/language", "The speech is in German.", 2), ("analysis/events", "I can hear music.", 4)]
    assert all(a == ["a"] for _, a in items)
    other = Example(id="f", stage="sft", task="voice_chat", audio=ex.audio, messages=msgs[:2], template="espeak:de@160")
    assert eval_items(other, []) == [(other, [])]


def test_an_analysis_answer_about_sounds_is_scored_by_the_names_it_lists():
    from trainer.scoring import headline_metric, score_task

    refs = ["I can hear explosion, gunshot, gunfire and fireworks.", "I can hear music and organ.", "I can hear bird."]
    hyps = ["I can hear gunshot, gunfire and explosion.", "I can hear music.", "I can hear telephone."]
    ev = score_task("analysis/events", refs, hyps)
    # 3 of 4 names (a comma inside a name splits alike on both sides); 1 of 2; none.
    assert ev["f1"] == pytest.approx((2 * 3 / 7 + 2 * 1 / 3 + 0.0) / 3) and ev["accuracy"] == 0.0
    assert headline_metric(ev) == "f1"
    # The best constant answer: "I can hear music and organ." scores 0, 1, 0.
    assert ev["chance_f1"] == pytest.approx(1 / 3)
