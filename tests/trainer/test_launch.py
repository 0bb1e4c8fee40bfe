"""Chaining the stages: task weights split by stage (``trainer/launch.py``)."""

import json

import pytest


def test_task_weights_go_to_the_stages_that_hold_their_tasks(tmp_path):
    from trainer.launch import stage_weights
    from trainer.config import TrainConfig
    from trainer.layout import TrainDataError

    (tmp_path / "manifest.json").write_text(json.dumps({"summary": {"examples_by_stage_task": {
        "pretrain/lid": 3, "pretrain/asr": 2, "pretrain/eval/caption": 1, "sft/analysis": 4, "sft/voice_chat": 1}}}))
    trn = TrainConfig(examples=str(tmp_path), output="o", task_weights={"lid": 2.0, "asr": 1.0, "voice_chat": 3.0})
    assert stage_weights(trn, ["pretrain", "sft"]) == {"pretrain": {"lid": 2.0, "asr": 1.0}, "sft": {"voice_chat": 3.0}}
    assert stage_weights(TrainConfig(examples=str(tmp_path), output="o", task_weights={"lid": 1.0}),
                          ["pretrain", "sft"])["sft"] == {}          # nothing named: not weighted
    with pytest.raises(TrainDataError, match=r"no stage holds: \['caption', 'poetry'\]"):
        stage_weights(TrainConfig(examples=str(tmp_path), output="o", task_weights={"poetry": 1.0, "caption": 1.0}),
                       ["pretrain", "sft"])
