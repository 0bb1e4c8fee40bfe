"""The training loop's arithmetic and resumability on a tiny model and TTS examples."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.config import TrainConfig
from trainer.data import Encoder, read_all
from trainer.losses import DPOLoss, IGNORE, nll_sum
from trainer.parallel import Dist
from trainer.steps import dpo_step, lm_step
from trainer.recipe import load_or_build
from trainer.layout import stage_shards


@pytest.fixture(scope="module")
def examples(lid_examples):
    return lid_examples


@pytest.fixture(scope="module")
def tiny(examples):
    model, processor, _ = load_or_build(TrainConfig(examples=str(examples), output="unused"))
    return model, processor


def _encoded(examples, processor, stage, n):
    enc = Encoder(processor.tokenizer, 4)
    return [enc.encode(ex, a) for ex, a in list(read_all(stage_shards(str(examples), stage)))[:n]]


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_batch_times_accumulation_invariance(examples, tiny):
    model, processor = tiny
    items = _encoded(examples, processor, "sft", 4)
    pad, fe = processor.tokenizer.pad_token_id, processor.feature_extractor
    model.zero_grad()
    one = lm_step(model, [items], pad, fe, Dist())
    g1 = _grads(model)
    model.zero_grad()
    two = lm_step(model, [items[:1], items[1:3], items[3:]], pad, fe, Dist())
    g2 = _grads(model)
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g1, g2))


def test_dpo_accumulation_invariance(examples, tiny):
    """An uneven split (1 + 3) and a policy that differs from the reference: a per-micro-batch average
    or a loss that ignores the reference would show here."""
    import copy

    model, processor = tiny
    ref = copy.deepcopy(model).requires_grad_(False)
    policy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    pairs = _encoded(examples, processor, "dpo", 4)
    pad, fe = processor.tokenizer.pad_token_id, processor.feature_extractor
    policy.zero_grad()
    one = dpo_step(policy, ref, [pairs], pad, fe, Dist(), DPOLoss(0.1))
    g1 = _grads(policy)
    policy.zero_grad()
    two = dpo_step(policy, ref, [pairs[:1], pairs[1:]], pad, fe, Dist(), DPOLoss(0.1))
    g2 = _grads(policy)
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    assert abs(one["loss"] - 0.6931) > 1e-3            # the policy really differs from the reference
    assert one["reward_accuracy"] == two["reward_accuracy"]
    assert one["reward_margin"] == pytest.approx(two["reward_margin"], rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g1, g2))


def test_no_gradient_reaches_prompt_audio_or_padding_positions(examples, tiny):
    from trainer.data import collate

    model, processor = tiny
    items = _encoded(examples, processor, "sft", 3)
    batch = collate(items, processor.tokenizer.pad_token_id, processor.feature_extractor)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.detach().requires_grad_(True)
    nll_sum(logits, batch["labels"]).backward()
    per_position = logits.grad.abs().sum(-1)[:, :-1]             # position t predicts label t + 1
    silent = batch["labels"][:, 1:] == IGNORE
    assert per_position[silent].max() == 0 and (per_position[~silent] > 0).all()
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert not ((batch["labels"] == audio_id).any())


def _losses(stage_dir: Path) -> dict[int, float]:
    out = {}
    for line in (stage_dir / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]     # a resumed run rewrites the steps after its checkpoint
    return out


@pytest.mark.parametrize("loader_workers,grad_accum,every,kill_after", [(0, 1, 4, 8), (2, 3, 3, 9)])
def test_resume_after_kill_continues_the_same_loss_curve(examples, tmp_path, loader_workers, grad_accum, every,
                                                         kill_after):
    """With 2 loader workers and 3 micro-batches a step, the step-9 checkpoint has consumed 27 micro-batches:
    the resumed DataLoader must start its round-robin at the second worker."""
    args = [str(examples), "stage=pretrain", "launcher=local", "max_steps=14", f"checkpoint_every={every}",
            "max_tokens=600", "task_weights={lid: 1.0}", f"grad_accum={grad_accum}", f"loader_workers={loader_workers}"]
    cmd = [sys.executable, "-m", "pipelines.cli", "train"]
    subprocess.run(cmd + [args[0], str(tmp_path / "straight"), *args[1:]], check=True, capture_output=True,
                   timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [args[0], str(killed), *args[1:]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (killed / "pretrain" / "checkpoints" / f"step-{kill_after:07d}").exists():
        time.sleep(0.1)
    import psutil

    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) == loader_workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "pretrain" / "final").exists(), "killed too late"
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"loader workers outlived the killed trainer: {alive}"
    log = killed / "pretrain" / "train_log.jsonl"
    written_before = len(log.read_text().splitlines())
    resumed = subprocess.run(cmd + [args[0], str(killed), *args[1:]], check=True, capture_output=True, text=True,
                             timeout=600)
    # It resumed at the checkpoint: the step, the stream positions, and only the steps after it ran.
    assert f"step-{kill_after:07d}" in resumed.stdout and f"(step {kill_after}, stream positions" in resumed.stdout
    new_steps = [json.loads(line)["step"] for line in log.read_text().splitlines()[written_before:]]
    assert new_steps == list(range(kill_after + 1, 15))
    a, b = _losses(tmp_path / "straight" / "pretrain"), _losses(killed / "pretrain")
    assert sorted(a) == sorted(b) == list(range(1, 15))
    assert [a[s] for s in a] == pytest.approx([b[s] for s in a], rel=1e-5)
    eval_json = json.loads((killed / "pretrain" / "eval.json").read_text())
    assert eval_json["steps"] == 14


def test_setup_step_checkpoint_and_resume_are_separate_parts_of_the_loop(examples, tmp_path):
    """One SFT step changes the projector and the LM and leaves the encoder; the checkpoint's export is
    scored and kept as best/; a new set-up resumes at that step with that best."""
    from trainer.steps import Batch, _tensors
    from trainer.features import LogMel
    from trainer.recipe import checkpoint, setup, train_step
    from trainer.scoring import held_out_score

    cfg = TrainConfig(examples=str(examples), output=str(tmp_path / "o"), stage="sft", max_steps=5, launcher="local",
                      warmup_steps=0, eval_max_examples=6, max_tokens=600)
    s = setup(cfg, Dist())
    assert s.step == 0 and s.best is None and s.modules == ["projector", "lm"]
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    items = _encoded(examples, s.processor, "sft", 3)
    for i, item in enumerate(items):
        item.position = 7 + i
    batch = Batch(items)
    batch.tensors = _tensors(items, s.processor.tokenizer.pad_token_id, LogMel(s.processor.feature_extractor), False)
    metrics = train_step(s, [batch])
    assert s.step == 1 and s.consumed == {"positions": [10], "batches": 1} and metrics["loss"] > 0
    moved = {".".join(n.split(".")[:2]) for n, p in s.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved >= {"model.multi_modal_projector", "model.language_model"} and "model.audio_tower" not in moved, moved

    checkpoint(s, metrics)
    best = json.loads((tmp_path / "o" / "sft" / "best" / "best.json").read_text())
    assert best["step"] == 1 and best["score"] == pytest.approx(held_out_score(best["eval"]))
    assert (tmp_path / "o" / "sft" / "best" / "model.safetensors").exists()
    assert not (tmp_path / "o" / "sft" / "candidate").exists()

    again = setup(cfg, Dist())
    assert again.step == 1 and again.consumed == {"positions": [10], "batches": 1}
    assert again.best == {"step": 1, "score": best["score"], "tiebreak": 0.0, "behind": 0}
    for n, p in again.model.named_parameters():
        assert torch.equal(p, dict(s.model.named_parameters())[n]), n


def test_a_checkpoint_becomes_best_only_when_its_held_out_score_beats_the_best(tmp_path):
    from types import SimpleNamespace

    from trainer.recipe import consider_best

    s = SimpleNamespace(stage_dir=str(tmp_path), best=None, step=0, dist=Dist(), cfg=SimpleNamespace(stage="sft"),
                        behind=0)

    def offer(step, accuracy):
        s.step = step
        folder = tmp_path / "candidate"
        folder.mkdir()
        (folder / "weights").write_text(str(step))
        consider_best(s, str(folder), {"tasks": {"lid": {"accuracy": accuracy}}})
        assert not folder.exists()
        return (tmp_path / "best" / "weights").read_text()

    assert offer(10, 0.5) == "10"
    assert offer(20, 0.3) == "10" and s.best == {"step": 10, "score": 0.5, "tiebreak": 0.0} and s.behind == 1
    assert json.loads((tmp_path / "best" / "best.json").read_text())["behind"] == 1    # for a resumed run
    assert offer(30, 0.5) == "30" and s.behind == 0     # a tie goes to the later step
    assert offer(40, 0.8) == "40" and json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 40
    s.step = 50
    (tmp_path / "candidate").mkdir()
    consider_best(s, str(tmp_path / "candidate"), {"examples": 0})     # nothing held out: nothing to compare
    assert (tmp_path / "best" / "weights").read_text() == "40" and not (tmp_path / "candidate").exists()


def _scores_by_step(monkeypatch, scores):
    """Held-out scores as given per step (the evaluation itself still runs on the real export)."""
    import trainer.recipe as recipe

    state = {}
    real_consider = recipe.consider_best

    def consider(s, folder, result, copy=False):
        state["step"] = s.step
        return real_consider(s, folder, result, copy)

    monkeypatch.setattr(recipe, "consider_best", consider)
    monkeypatch.setattr(recipe, "held_out_score", lambda result: scores[state["step"]])


def test_training_stops_after_patience_scores_below_the_best_and_hands_on_the_best(examples, tmp_path, monkeypatch):
    from trainer.checkpoints import stage_checkpoint
    from trainer.recipe import train_loop

    _scores_by_step(monkeypatch, {1: 0.5, 2: 0.4, 3: 0.45, 4: 0.9})
    cfg = TrainConfig(examples=str(examples), output=str(tmp_path), stage="sft", max_steps=10, checkpoint_every=1,
                      patience=2, launcher="local", warmup_steps=0, eval_max_examples=2, max_tokens=600)
    result = train_loop(cfg)
    assert result["steps"] == 3           # not 10 (no early stopping), not 2 (stopping at the first drop)
    lines = [json.loads(x) for x in (tmp_path / "sft" / "held_out.jsonl").read_text().splitlines()]
    assert [(x["step"], x["score"]) for x in lines] == [(1, 0.5), (2, 0.4), (3, 0.45), (3, 0.45)]
    assert json.loads((tmp_path / "sft" / "best" / "best.json").read_text())["step"] == 1
    assert stage_checkpoint(str(tmp_path), "sft") == str(tmp_path / "sft" / "best")


def test_dpo_keeps_its_starting_model_as_best_when_training_only_lowers_the_held_out_score(examples, tmp_path,
                                                                                          monkeypatch):
    from safetensors.torch import load_file

    from trainer.recipe import train_loop

    _scores_by_step(monkeypatch, {0: 0.8, 1: 0.6, 2: 0.7})
    cfg = TrainConfig(examples=str(examples), output=str(tmp_path), stage="dpo", max_steps=10, checkpoint_every=1,
                      patience=2, launcher="local", warmup_steps=0, eval_max_examples=2, max_tokens=600)
    result = train_loop(cfg)
    assert result["steps"] == 2 and result["best"]["step"] == 0
    best, reference = (load_file(str(tmp_path / "dpo" / d / "model.safetensors")) for d in ("best", "reference"))
    final = load_file(str(tmp_path / "dpo" / "final" / "model.safetensors"))
    assert all(torch.equal(best[k], reference[k]) for k in reference)
    assert any(not torch.equal(final[k], reference[k]) for k in reference)     # it did train


def test_dpo_makes_one_pass_over_its_pairs_by_default_whatever_max_steps_says(examples, tmp_path):
    from trainer.recipe import train_loop

    cfg = TrainConfig(examples=str(examples), output=str(tmp_path), stage="dpo", max_steps=1000, launcher="local",
                      keep_best=False, max_tokens=600, shuffle_buffer=8)
    pairs = sum(1 for _ in read_all(stage_shards(str(examples), "dpo")))
    result = train_loop(cfg)
    state = torch.load(next((tmp_path / "dpo" / "checkpoints").glob("step-*/state.pt")), weights_only=True)
    read = state["ranks"][0]["positions"][0]        # samples the run's stream read
    assert 10 < result["steps"] < 1000 and 0.9 * pairs <= read <= 1.1 * pairs + 8, (result["steps"], read, pairs)
    no_cap = TrainConfig(**{**cfg.__dict__, "output": str(tmp_path / "b"), "max_steps": 3, "max_epochs": 0.0})
    assert train_loop(no_cap)["steps"] == 3


def test_held_out_score_is_the_mean_task_score_and_reward_accuracy_only_without_tasks():
    from trainer.scoring import held_out_score

    tasks = {"lid": {"accuracy": 0.5}, "asr": {"wer": 0.25}, "s2tt": {"wer": 1.5}}
    assert held_out_score({"tasks": tasks, "reward_accuracy": 1.0}) == pytest.approx((0.5 + 0.75 + 0.0) / 3)
    assert held_out_score({"reward_accuracy": 0.75}) == 0.75
    assert held_out_score({"examples": 0}) is None
    # Without the SFT tasks, DPO is scored by held-out preference accuracy: reward accuracy is 0.5 for the
    # starting model whatever it knows.
    assert held_out_score({"reward_accuracy": 0.9, "preference_accuracy": 0.7}) == 0.7


def test_after_dpo_equal_task_scores_are_decided_by_held_out_preference_accuracy(tmp_path):
    """Measured: one pass of DPO kept the held-out task score and lowered held-out preference accuracy
    (0.865 → 0.846), and lost 3 of 256 unseen words; plain DPO for 1,500 steps raised preference accuracy
    and lowered the task score. Neither may replace its starting model."""
    from types import SimpleNamespace

    from trainer.recipe import consider_best

    s = SimpleNamespace(stage_dir=str(tmp_path), best=None, step=0, dist=Dist(), cfg=SimpleNamespace(stage="dpo"),
                        behind=0)

    def offer(step, accuracy, preference):
        s.step = step
        (tmp_path / "candidate").mkdir()
        (tmp_path / "candidate" / "weights").write_text(str(step))
        consider_best(s, str(tmp_path / "candidate"), {"tasks": {"lid": {"accuracy": accuracy}},
                                                       "reward_accuracy": 0.9, "preference_accuracy": preference})
        return (tmp_path / "best" / "weights").read_text()

    assert offer(0, 0.827, 0.865) == "0"
    assert offer(27, 0.827, 0.846) == "0"       # the same task score, fewer held-out pairs preferred
    assert offer(60, 0.788, 0.904) == "0"       # more pairs preferred, a lower task score
    assert offer(90, 0.827, 0.865) == "90"      # a tie on both goes to the later step
    assert offer(120, 0.846, 0.5) == "120" and s.best["tiebreak"] == 0.5


def test_held_out_preference_accuracy_compares_the_policy_with_the_reference_itself(examples, tiny):
    """Reward accuracy of the reference against itself is 0 wins (every margin is 0); preference accuracy
    (chosen more likely than rejected) is the reference's own before and the policy's after, counted by hand."""
    import copy

    from trainer.losses import sequence_logprob
    from trainer.features import LogMel
    from trainer.scoring import _eval_dpo
    from trainer.steps import _logits, _to
    from trainer.data import collate

    model, processor = tiny
    policy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    held = list(read_all(stage_shards(str(examples), "dpo", held_out=True)))[:6]
    enc, fe = Encoder(processor.tokenizer, 4), LogMel(processor.feature_extractor)
    cfg, pad, cpu = TrainConfig(examples=str(examples), output="o", stage="dpo"), processor.tokenizer.pad_token_id, torch.device("cpu")
    same = _eval_dpo(cfg, model, model, pad, fe, enc, held, cpu)
    assert same["reward_accuracy"] == 0.0 and same["preference_accuracy"] == same["preference_accuracy_before"]
    out = _eval_dpo(cfg, policy, model, pad, fe, enc, held, cpu)

    def prefers(m):
        wins = 0
        for ex, audios in held:
            p = enc.encode(ex, audios)
            b = _to(collate([p.chosen, p.rejected], pad, fe), cpu)
            lp = sequence_logprob(_logits(m, b), b["labels"])
            wins += int(lp[0] > lp[1])
        return wins / len(held)

    assert out["preference_accuracy"] == prefers(policy) and out["preference_accuracy_before"] == prefers(model)
    assert out["preference_accuracy_before"] == same["preference_accuracy"]


def test_progress_lines_come_at_most_every_few_seconds_and_at_the_last_step(monkeypatch, capsys):
    import trainer.console as r

    now = [0.0]
    monkeypatch.setattr(r.time, "monotonic", lambda: now[0])
    progress = r._Progress("sft", 0, 600, Dist(), every_s=15.0)
    for step in range(10, 601, 10):          # a step a second
        now[0] += 10.0
        progress.tokens = 100
        progress.log(None, step, {"loss": 1.0})
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "sft step" in ln]
    steps = [int(ln.split("sft step ")[1].split("/")[0]) for ln in lines]
    assert steps[0] == 10 and steps[-1] == 600 and len(steps) == 31       # 10, 30, 50, …, 590, 600
    assert all(b - a >= 20 for a, b in zip(steps, steps[1:-1])) and "eta" in lines[0]
