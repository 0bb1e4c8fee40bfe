"""Training on imperfect example sets and interrupted runs: each case ends with a clear message and exit
code, or trains and evaluates on what is readable — never a crash late in the run, a hang or a spin."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from trainer.demo import build_language_id

CLI = [sys.executable, "-m", "pipelines.cli"]
FAST = ["launcher=local", "max_tokens=600", "eval_max_examples=4", "warmup_steps=1"]


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    build_language_id(root)
    return root


def _train(args, timeout=600):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout)


def _copy(examples, dest, stages=("pretrain", "sft", "dpo"), eval_sets=True):
    for stage in stages:
        shutil.copytree(examples / stage, dest / stage, ignore=None if eval_sets else shutil.ignore_patterns("eval"))
    return dest


def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy a shard, passing each member's (name, bytes) through ``change`` (None drops the member)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            out = change(m.name, data)
            if out is not None:
                info = tarfile.TarInfo(m.name)
                info.size = len(out)
                tout.addfile(info, io.BytesIO(out))


def test_only_one_stage_of_shards_trains_that_stage(examples, tmp_path):
    ex = _copy(examples, tmp_path / "ex", stages=("pretrain",))
    run = _train(["train-all", str(ex), str(tmp_path / "out"), "max_steps=2", *FAST])
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "out" / "pretrain" / "final").is_dir() and not (tmp_path / "out" / "sft").exists()
    assert "no sft shards" in run.stdout
    run = _train(["train", str(ex), str(tmp_path / "out2"), "stage=sft", "max_steps=2", *FAST])
    assert run.returncode == 2 and "no example shards for sft: expected sft/*.tar" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("layout", ["empty", "missing", "wrong"])
def test_nothing_to_train_on_exits_2_and_says_what_was_expected(tmp_path, layout):
    ex = tmp_path / "ex"
    if layout != "missing":
        ex.mkdir()
    if layout == "wrong":
        (ex / "segments-000000.tar").write_bytes(b"")
    run = _train(["train-all", str(ex), str(tmp_path / "out"), *FAST], timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "pretrain/*.tar, sft/*.tar, dpo/*.tar" in run.stderr or "does not exist" in run.stderr
    if layout == "wrong":
        assert "segments-000000.tar" in run.stderr


def test_bad_shards_and_samples_are_skipped_from_tokenizer_to_evaluation(examples, tmp_path):
    ex = _copy(examples, tmp_path / "ex", stages=("pretrain",))
    shard = sorted((ex / "pretrain").glob("*.tar"))[0]
    (ex / "pretrain" / "zz-truncated.tar").write_bytes(shard.read_bytes()[:9000])
    _rewrite(shard, ex / "pretrain" / "zz-noaudio.tar", lambda n, d: None if n.endswith(".flac") else d)
    _rewrite(shard, ex / "pretrain" / "zz-notflac.tar", lambda n, d: b"not flac" * 10 if n.endswith(".flac") else d)
    (ex / "pretrain" / "eval" / "aa-junk.tar").write_bytes(b"junk" * 500)     # read first
    run = _train(["train", str(ex), str(tmp_path / "out"), "stage=pretrain", "max_steps=3", *FAST])
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "pretrain" / "eval.json").read_text())
    assert result["steps"] == 3 and result["eval"]["examples"] == 4
    assert "skipped" in result["eval"]["held_out"]


def test_data_that_is_all_unreadable_stops_instead_of_spinning(examples, tmp_path):
    ex = _copy(examples, tmp_path / "ex", stages=("pretrain",))
    for shard in (ex / "pretrain").glob("*.tar"):
        _rewrite(shard, shard.with_suffix(".bad"), lambda n, d: b"junk" if n.endswith(".flac") else d)
        shard.unlink()
        shard.with_suffix(".bad").rename(shard)
    (tmp_path / "tok").mkdir()
    run = _train(["train", str(ex), str(tmp_path / "out"), "stage=pretrain", "max_steps=3", *FAST,
                  "model_dir=" + str(_export(examples, tmp_path))], timeout=300)
    assert run.returncode == 3 and "could not be read" in run.stderr, run.stderr[-2000:]


def _export(examples, tmp_path) -> Path:
    out = tmp_path / "base"
    if not (out / "pretrain" / "final").exists():
        run = _train(["train", str(examples), str(out), "stage=pretrain", "max_steps=0", *FAST])
        assert run.returncode == 0, run.stderr[-2000:]
    return out / "pretrain" / "final"


def test_task_weights_for_a_task_the_data_lacks_fail_before_training(examples, tmp_path):
    run = _train(["train", str(examples), str(tmp_path / "out"), "stage=sft", "task_weights={asr: 1.0}", *FAST],
                 timeout=120)
    assert run.returncode == 2 and "task_weights names tasks the sft shards do not hold: ['asr']" in run.stderr
    assert not (tmp_path / "out" / "sft" / "checkpoints").exists()


def test_max_steps_0_exports_and_evaluates_the_starting_model(examples, tmp_path):
    final = _export(examples, tmp_path)
    result = json.loads((final.parent / "eval.json").read_text())
    assert result["steps"] == 0 and result["eval"]["examples"] == 4 and (final / "model.safetensors").exists()


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


def test_without_a_held_out_set_a_seeded_slice_of_sources_is_held_out(examples, tmp_path):
    from trainer.config import TrainConfig
    from trainer.recipe import Dist, encoded_stream, held_out_examples, in_holdout
    from trainer.data import SkipCounter, read_all

    ex = _copy(examples, tmp_path / "ex", stages=("pretrain",), eval_sets=False)
    cfg = TrainConfig(examples=str(ex), output=str(tmp_path / "o"), stage="pretrain", eval_holdout=0.2,
                      eval_max_examples=1000)
    everything = list(read_all(sorted(str(p) for p in (ex / "pretrain").glob("*.tar"))))
    held = {e.id for e, _ in everything if in_holdout(e, cfg)}
    assert 0.1 * len(everything) < len(held) < 0.3 * len(everything)
    examples_, note = held_out_examples(cfg)
    assert {e.id for e, _ in examples_} == held and "held-out 20%" in note

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
    assert run.returncode == 0 and "holding out 5% of the sources" in run.stdout
    assert json.loads((tmp_path / "out" / "pretrain" / "eval.json").read_text())["eval"]["examples"] > 0
