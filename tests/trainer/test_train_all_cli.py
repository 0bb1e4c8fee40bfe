"""`audiomill train-all` runs pretrain → SFT → DPO from example shards, each stage from the last one's export."""

import json
import subprocess
import sys


def test_train_all_cli_runs_every_stage(lid_examples, tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "train-all", str(lid_examples), str(out),
                          "launcher=local", "max_steps=4", "max_tokens=600", "eval_max_examples=4"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for stage in ("pretrain", "sft", "dpo"):
        assert (out / stage / "final" / "model.safetensors").exists()
        assert (out / stage / "final" / "tokenizer.json").exists()
        result = json.loads((out / stage / "eval.json").read_text())
        assert result["steps"] == 4 and result["eval"]["examples"] == 4
        assert list((out / stage / "tensorboard").iterdir())
    dpo = json.loads((out / "dpo" / "eval.json").read_text())["eval"]
    assert "reward_accuracy" in dpo
    # After DPO, generation on the SFT held-out set, beside the SFT checkpoint's (DPO's reference).
    sft = json.loads((out / "sft" / "eval.json").read_text())["eval"]
    assert set(dpo["tasks"]) == set(dpo["tasks_before"]) == set(sft["tasks"])
    assert dpo["tasks_before"]["lid"]["accuracy"] == sft["tasks"]["lid"]["accuracy"]
    assert dpo["tasks_held_out"] == "sft/eval"
