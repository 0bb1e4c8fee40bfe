"""Runs the training table (train_cases.py) through the CLI: the exit code and message expected, nothing
outside OUTPUT_DIR changed, no traceback."""

import subprocess
import sys

import pytest

from tests.hostile.test_hostile import snapshot
from tests.hostile.train_cases import FAST, TRAIN, TrainCase


@pytest.fixture(scope="module")
def examples(lid_examples):
    return lid_examples


@pytest.fixture(scope="module")
def base_model(examples, tmp_path_factory):
    """A tiny export (the starting point of cases that must not build a tokenizer)."""
    out = tmp_path_factory.mktemp("base")
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", str(examples), str(out), "stage=pretrain",
                          "max_steps=0", *FAST], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return out / "pretrain" / "final"


@pytest.mark.parametrize("case", TRAIN, ids=[c.name for c in TRAIN])
def test_training_refuses_or_copes_as_expected(examples, base_model, tmp_path, case: TrainCase):
    ex = case.make(examples, tmp_path / "ex")
    out = tmp_path / "out"
    args = [a.format(ex=ex, out=out, base=base_model) for a in case.args]
    before = snapshot(tmp_path)
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", *args, *FAST], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == case.exit_code, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if case.exit_code:      # warnings may come first; the last line says why it stopped
        last = [line for line in run.stderr.splitlines() if line.strip()][-1]
        assert last.startswith(f"audiomill {args[0]}: ") or f"audiomill {args[0]}: " in run.stderr, run.stderr[-2000:]
        assert case.message in run.stderr, run.stderr[-2000:]
    elif case.message:
        assert case.message in run.stdout, run.stdout[-2000:]
    after = snapshot(tmp_path)
    outside = [k for k in set(before) | set(after) if before.get(k) != after.get(k)
               and not k.startswith(str(out).encode())]
    assert not outside, outside
    if case.check:
        case.check(out)
