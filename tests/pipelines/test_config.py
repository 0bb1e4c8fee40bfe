import subprocess
import sys

import pytest

from pipelines.config import ConfigError, load_config, parse_overrides
from pipelines.curate import CurateConfig


def test_overrides_parse_types():
    tree, problems = parse_overrides(["vad.threshold=0.6", "name=x", "keep_work=true", "shards.max_samples=5"])
    assert tree == {"vad": {"threshold": 0.6}, "name": "x", "keep_work": True, "shards": {"max_samples": 5}}
    assert problems == []


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(CurateConfig, None, ["vad.treshold=0.6", "shards.max_samples=lots", "audio.chunk_s=true",
                                         "bogus=1"], {"inputs": [str(tmp_path / "nope")], "output": str(tmp_path / "o")})
    text = "\n".join(e.value.problems)
    assert "vad.treshold: unknown key (did you mean 'threshold'?)" in text
    assert "shards.max_samples: expected an integer" in text
    assert "audio.chunk_s: expected a number" in text
    assert "bogus: unknown key" in text
    assert "does not exist" in text  # value checks run too, on defaults for the bad values
    assert len(e.value.problems) == 5


def test_value_checks(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(CurateConfig, None, ["vad.max_segment_s=45", "vad.threshold=1.5", "shards.target_mb=0"],
                    {"inputs": [str(tmp_path / "nope")], "output": str(tmp_path / "o")})
    text = "\n".join(e.value.problems)
    for needle in ["does not exist", "exceeds the encoder window", "neg_threshold", "shards.target_mb: must be > 0"]:
        assert needle in text


def test_yaml_file_and_sources(tmp_path):
    (tmp_path / "in").mkdir()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"sources:\n  - path: {tmp_path / 'in'}\n    corpus: demo\n    kind: music\n"
                        "vad:\n  threshold: 0.6\n")
    cfg = load_config(CurateConfig, str(cfg_file), ["output=" + str(tmp_path / "o")])
    assert cfg.vad.threshold == 0.6 and cfg.sources[0].corpus == "demo" and cfg.sources[0].kind == "music"
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - path: x\n    kind: noise\n    colums: {}\n")
    with pytest.raises(ConfigError) as e:
        load_config(CurateConfig, str(bad), ["output=o"])
    assert any("colums" in p for p in e.value.problems)


def test_cli_config_error_fails_before_ray_starts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", str(tmp_path / "missing"), str(tmp_path / "o"),
                          "vad.threshold=high", "nonsense=1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "vad.threshold: expected a number" in out.stderr
    assert "nonsense: unknown key" in out.stderr
    assert "Ray" not in out.stdout + out.stderr and not (tmp_path / "o").exists()


def test_shipped_config_lists_every_key_with_its_default(tmp_path):
    """configs/curate.yaml is written by scripts/write_configs.py; rerun it after changing a default."""
    import dataclasses
    from pathlib import Path

    import yaml

    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "curate.yaml").read_text())
    defaults = dataclasses.asdict(CurateConfig())
    assert {k: v for k, v in shipped.items() if k != "sources"} == {
        k: v for k, v in defaults.items() if k not in ("inputs", "output", "sources")}
    (tmp_path / "in").mkdir()
    shipped["sources"][0]["path"] = str(tmp_path / "in")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(shipped))
    cfg = load_config(CurateConfig, str(tmp_path / "c.yaml"), ["output=o"])
    assert cfg.sources[0].license == "CC-BY-4.0"


def test_overrides_may_follow_the_config_option(tmp_path):

    (tmp_path / "c.yaml").write_text("vad: {threshold: 0.6}\n")
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", str(tmp_path / "nope"), str(tmp_path / "o"),
                          "--config", str(tmp_path / "c.yaml"), "vad.threshold=high"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "vad.threshold: expected a number" in out.stderr and "does not exist" in out.stderr


def test_a_mapping_override_merges_into_what_it_names(tmp_path):
    """``train.stage_steps={dpo: 3}`` changes DPO's steps and keeps the other stages' (it used to drop them
    when an earlier override or the command line had set them), from a file or from earlier overrides."""
    tree, problems = parse_overrides(["train.stage_steps={pretrain: 3, sft: 4, dpo: 2}", "train.stage_steps={dpo: 5}"])
    assert tree == {"train": {"stage_steps": {"pretrain": 3, "sft": 4, "dpo": 5}}} and problems == []
    tree, _ = parse_overrides(["train.stage_steps.sft=7", "train.stage_steps={dpo: 5}", "train.lr=0.1"])
    assert tree == {"train": {"stage_steps": {"sft": 7, "dpo": 5}, "lr": 0.1}}
    from trainer.config import TrainConfig

    cfg = tmp_path / "train.yaml"
    cfg.write_text("stage_steps: {pretrain: 10, sft: 20, dpo: 30}\ntask_weights: {lid: 2.0, asr: 1.0}\n")
    c = load_config(TrainConfig, str(cfg), ["stage_steps={dpo: 5}", "task_weights={asr: 0.5}"],
                    {"examples": "e", "output": "o"})
    assert c.stage_steps == {"pretrain": 10, "sft": 20, "dpo": 5}
    assert c.task_weights == {"lid": 2.0, "asr": 0.5}
    # A scalar still replaces a scalar, and a value where a mapping was is the value.
    tree, _ = parse_overrides(["name=a", "name=b", "mix={a: 1}", "mix=none"])
    assert tree == {"name": "b", "mix": "none"}


def test_a_number_in_scientific_notation_is_a_number_though_yaml_reads_it_as_text():
    """YAML 1.1 reads 2e-3 (no dot) as a string; as a float setting it is the number."""
    from trainer.config import TrainConfig

    cfg = load_config(TrainConfig, None, ["lr=2e-3", "beta=1E-1"], {"examples": "e", "output": "o"})
    assert cfg.lr == 0.002 and cfg.beta == 0.1
    with pytest.raises(ConfigError, match="lr: expected a number"):
        load_config(TrainConfig, None, ["lr=2e-3x"], {"examples": "e", "output": "o"})
