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


def test_the_defaults_keep_dpo_from_undoing_sft():
    """RPO's NLL term, one pass over the pairs, early stopping on the held-out task score (not on reward
    accuracy, which keeps rising while DPO over-optimises)."""
    dpo = TrainConfig(stage="dpo", max_steps=1500)
    assert dpo.rpo_alpha == 1.0 and dpo.epochs() == 1.0 and dpo.patience == 2 and dpo.keep_best
    assert TrainConfig(stage="sft").epochs() == 0 and TrainConfig(stage="dpo", max_epochs=0.0).epochs() == 0


def test_train_config_errors_are_all_reported():
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["stage=finetune", "preset=huge", "max_tokens=0", "train_modules=[decoder]",
                                        "lr=fast", "max_epochs=-1", "patience=-2"], {})
    text = "\n".join(e.value.problems)
    for needle in ["examples: an EXAMPLES_DIR is required", "stage: 'finetune'", "preset: 'huge'",
                   "max_tokens: must be > 0", "train_modules", "lr: expected a number", "max_epochs: must be ≥ 0",
                   "patience: must be ≥ 0"]:
        assert needle in text, needle
    with pytest.raises(ConfigError, match="model_dir"):
        load_config(TrainConfig, None, ["preset=qwen2-audio-7b"], {"examples": "e", "output": "o"})


def test_cli_reports_bad_train_config_before_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", str(tmp_path), str(tmp_path / "o"),
                          "stage=nope", "bogus=1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "stage: 'nope'" in out.stderr and "bogus: unknown key" in out.stderr


def test_a_model_dir_that_is_not_qwen2_audio_fails_at_once_naming_what_it_holds(tmp_path):
    """It used to warn, then build a default-size (7B) random Qwen2-Audio, killed at 18.5 GB."""
    from tests.factories import tiny_text_lm

    qwen2 = tmp_path / "qwen2"
    tiny_text_lm(qwen2, 64)
    (tmp_path / "empty").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text('{"model_type": "qwen2_audio"}')
    (tmp_path / "omni").mkdir()
    (tmp_path / "omni" / "config.json").write_text('{"model_type": "qwen2_5_omni"}')
    for folder, needle in [(tmp_path / "omni", "holds a 'qwen2_5_omni' checkpoint. Qwen2.5-Omni (its thinker) is not"),
                           (qwen2, "holds a 'qwen2' checkpoint; supported model types: qwen2_audio"),
                           (tmp_path / "empty", "holds no config.json"), (tmp_path / "missing", "is not a folder"),
                           (tmp_path / "noweights", "is missing its weights and tokenizer and processor config")]:
        with pytest.raises(ConfigError) as e:
            load_config(TrainConfig, None, [f"model_dir={folder}"], {"examples": "e", "output": "o"})
        assert needle in str(e.value), (folder, e.value)
    # Through the CLI: exit 2 and one line, before any model is built; eval the same.
    for cmd in (["train", str(tmp_path), str(tmp_path / "o"), f"model_dir={qwen2}"],
                ["eval", str(qwen2), str(tmp_path)], ["eval", str(tmp_path / "empty"), str(tmp_path)]):
        out = subprocess.run([sys.executable, "-m", "pipelines.cli", *cmd], capture_output=True, text=True, timeout=120,
                             cwd=ROOT)
        assert out.returncode == 2, (cmd, out.stderr[-1000:])
        assert "Traceback" not in out.stderr and ("'qwen2' checkpoint" in out.stderr or "config.json" in out.stderr)
        assert not (tmp_path / "o").exists()
