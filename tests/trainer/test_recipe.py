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
from trainer.recipe import Dist, dpo_step, lm_step, load_or_build, stage_shards


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
