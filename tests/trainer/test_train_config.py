import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError, load_config
from trainer.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_train_config_lists_every_key_with_its_default():
    shipped = yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())
    defaults = {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k not in ("examples", "output")}
    assert shipped == defaults


def test_train_config_errors_are_all_reported():
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["stage=finetune", "preset=huge", "max_tokens=0", "train_modules=[decoder]",
                                        "lr=fast"], {})
    text = "\n".join(e.value.problems)
    for needle in ["examples: an EXAMPLES_DIR is required", "stage: 'finetune'", "preset: 'huge'",
                   "max_tokens: must be > 0", "train_modules", "lr: expected a number"]:
        assert needle in text, needle
    with pytest.raises(ConfigError, match="model_dir"):
        load_config(TrainConfig, None, ["preset=qwen2-audio-7b"], {"examples": "e", "output": "o"})


def test_cli_reports_bad_train_config_before_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", str(tmp_path), str(tmp_path / "o"),
                          "stage=nope", "bogus=1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "stage: 'nope'" in out.stderr and "bogus: unknown key" in out.stderr
