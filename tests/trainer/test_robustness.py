"""Interrupted and resumed training runs, the held-out slice, and bugs that must not pass for bad data (the
table of bad example sets is tests/hostile/train_cases.py)."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest


CLI = [sys.executable, "-m", "pipelines.cli"]
FAST = ["launcher=local", "max_tokens=600", "eval_max_examples=4", "warmup_steps=1"]


@pytest.fixture(scope="module")
def examples(lid_examples):
    return lid_examples


def _train(args, timeout=600):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout)


def test_a_bug_while_reading_data_is_not_skipped_as_bad_data(examples, tmp_path, monkeypatch):
    import trainer.loader as loader
    from trainer.config import TrainConfig
    from trainer.data import SkipCounter
    from trainer.parallel import Dist

    def buggy(sample):
        raise KeyError("a bug, not bad data")

    monkeypatch.setattr(loader, "decode_sample", buggy)
    cfg = TrainConfig(examples=str(examples), output=str(tmp_path), stage="pretrain")
    errors = SkipCounter()
    with pytest.raises(KeyError, match="a bug"):
        next(loader.encoded_stream(cfg, None, Dist(), 0, errors))
    assert errors.skipped == 0


def _copy(examples, dest, stages=("pretrain", "sft", "dpo"), eval_sets=True):
    for stage in stages:
        shutil.copytree(examples / stage, dest / stage, ignore=None if eval_sets else shutil.ignore_patterns("eval"))
    return dest


def test_a_killed_save_and_a_corrupt_checkpoint_fall_back_to_the_one_before(examples, tmp_path):
    out = tmp_path / "out"
    args = ["train", str(examples), str(out), "stage=pretrain", "checkpoint_every=2", *FAST]
    assert _train(args + ["max_steps=4"]).returncode == 0
    ckpts = out / "pretrain" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000002", "step-0000004"]
    (ckpts / "step-0000006.tmp").mkdir()
    (ckpts / "step-0000006.tmp" / "state.pt").write_bytes(b"half a checkpoint")
    state = ckpts / "step-0000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    run = _train(args + ["max_steps=6"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "checkpoint unreadable, trying the one before" in run.stdout
    assert f"resuming pretrain from {ckpts / 'step-0000002' / 'state.pt'} (step 2" in run.stdout
    assert not (ckpts / "step-0000006.tmp").exists()
    assert json.loads((out / "pretrain" / "eval.json").read_text())["steps"] == 6
    # keep_checkpoints (2 by default): the step-2 checkpoint went when step 6 was saved
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000004", "step-0000006"]


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_ctrl_c_stops_promptly_with_a_checkpoint_and_exit_130(examples, tmp_path, loader_workers):
    out = tmp_path / "out"
    args = CLI + ["train", str(examples), str(out), "stage=pretrain", "max_steps=500", "checkpoint_every=1000",
                  f"loader_workers={loader_workers}", *FAST]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "pretrain" / "train_log.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    t = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert time.monotonic() - t < 30
    steps = len(log.read_text().splitlines())
    assert (out / "pretrain" / "checkpoints" / f"step-{steps:07d}" / "state.pt").exists()
    assert "interrupted at step" in stderr and "Traceback" not in stderr
    assert not (out / "pretrain" / "final").exists()


def test_without_a_held_out_set_groups_of_content_are_held_out_of_training(examples, tmp_path):
    from trainer.config import TrainConfig
    from trainer.parallel import Dist
    from trainer.loader import encoded_stream
    from trainer.scoring import held_out_examples
    from trainer.layout import in_holdout
    from trainer.data import SkipCounter, read_all

    ex = _copy(examples, tmp_path / "ex", stages=("pretrain",), eval_sets=False)
    cfg = TrainConfig(examples=str(ex), output=str(tmp_path / "o"), stage="pretrain", eval_holdout=0.2,
                      eval_max_examples=1000)
    everything = list(read_all(sorted(str(p) for p in (ex / "pretrain").glob("*.tar"))))
    held = {e.id for e, _ in everything if in_holdout(e, cfg)}
    assert 0.1 * len(everything) < len(held) < 0.3 * len(everything)
    examples_, note = held_out_examples(cfg)
    assert {e.id for e, _ in examples_} == held and "sharing no source recording or content" in note
    # Every recording of a held-out word is held out: no word is on both sides.
    words = {e.provenance["transcript"] for e, _ in everything if e.id in held}
    assert words and not words & {e.provenance["transcript"] for e, _ in everything if e.id not in held}

    class Recorder:
        def __init__(self):
            self.ids = []

        def encode(self, e, audios):
            self.ids.append(e.id)
            return type("Item", (), {})()

    rec = Recorder()
    stream = encoded_stream(cfg, rec, Dist(), 0, SkipCounter())
    for _ in range(2 * len(everything)):
        next(stream)
    assert set(rec.ids) == {e.id for e, _ in everything} - held
    run = _train(["train", str(ex), str(tmp_path / "out"), "stage=pretrain", "max_steps=2", *FAST])
    assert run.returncode == 0 and "held out for evaluation by content" in run.stdout, run.stdout
    assert json.loads((tmp_path / "out" / "pretrain" / "eval.json").read_text())["eval"]["examples"] > 0
