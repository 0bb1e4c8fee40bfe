"""A training run on an embedded Ray cluster prints the run, not Ray Train's machinery: no
PlacementGroupCleaner warnings (its State API queries, three a second) and no traceback at the end."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_an_embedded_ray_train_run_logs_its_progress_and_nothing_of_the_placement_group_cleaner(lid_examples, tmp_path):
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", str(lid_examples), str(tmp_path / "o"),
                          "stage=pretrain", "launcher=ray", "max_steps=20", "max_tokens=600", "eval_max_examples=4"],
                         capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "pretrain step 20/20:" in log and " eta " in log and "pretrain: done" in log
    assert "PlacementGroupCleaner" not in log and "State API" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert len(log.splitlines()) < 40, log          # 17 here; 49 with the cleaner


def test_under_a_quiet_ray_the_training_lines_are_echoed_once(lid_examples, tmp_path):
    """`audiomill run` starts Ray without worker output for its data phases; the driver then prints what
    rank 0 writes to the stage's console.log, each line once."""
    script = (
        "import sys\n"
        "from pipelines.runtime import RayConfig, init_ray\n"
        "from trainer.config import TrainConfig\n"
        "from trainer.launch import run_stage\n"
        "init_ray(RayConfig())\n"
        "run_stage(TrainConfig(examples=sys.argv[1], output=sys.argv[2], stage='pretrain', launcher='ray',\n"
        "                      max_steps=20, max_tokens=600, eval_max_examples=4), echo=True)\n")
    run = subprocess.run([sys.executable, "-c", script, str(lid_examples), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert log.count("pretrain step 20/20:") == 1 and log.count("pretrain: done") == 1, log
    assert (tmp_path / "o" / "pretrain" / "console.log").read_text().count("pretrain step 20/20:") == 1
