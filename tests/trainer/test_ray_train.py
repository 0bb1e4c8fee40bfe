"""The same loop under Ray Train: TorchTrainer with 2 CPU workers (DDP over gloo)."""

import json

import pytest

from trainer.config import TrainConfig
from trainer.recipe import run_stage
from tests.trainer.factory import build_language_id

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_two_worker_ddp_pretrain(tmp_path, ray_cluster):
    build_language_id(tmp_path / "ex")
    cfg = TrainConfig(examples=str(tmp_path / "ex"), output=str(tmp_path / "out"), stage="pretrain", launcher="ray",
                      num_workers=2, max_steps=8, checkpoint_every=4, max_tokens=600)
    result = run_stage(cfg)
    assert result["steps"] == 8 and result["eval"]["examples"] == 16
    assert (tmp_path / "out" / "pretrain" / "final" / "config.json").exists()
    log = [json.loads(line) for line in (tmp_path / "out" / "pretrain" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    # The global token count is summed over both ranks' micro-batches.
    assert all(r["target_tokens"] > 0 for r in log)
