"""Running stages: one stage on Ray Train (TorchTrainer, DDP or FSDP; gloo on CPU) or in this process
(``launcher=local``), and pretrain → SFT → DPO, each stage starting from the one before."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from trainer.checkpoints import stage_checkpoint
from trainer.config import STAGES, TrainConfig
from trainer.console import CONSOLE, _Echo
from trainer import memory
from trainer.layout import (TrainDataError, check_data, foreign_shards, held_out_slice, holdout_plan, layout_problem,
                            stage_shards, stage_tasks)
from trainer.parallel import Dist
from trainer.recipe import train_loop


def ray_train_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's per-worker entry: the worker's rank, group size and device come from Ray Train."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    dist = Dist(rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=ray.train.torch.get_device(), ray=True)
    return train_loop(TrainConfig(**config), dist)


def run_stage(cfg: TrainConfig, echo: bool = False) -> dict[str, Any]:
    """Train one stage with the configured launcher; return what ``eval.json`` holds. With ``echo``, the
    training's console lines are printed here as they come (for a Ray that does not forward worker output)."""
    # Ray Train workers run in their own working directory: relative paths are resolved here.
    cfg = dataclasses.replace(cfg, **{k: os.path.abspath(getattr(cfg, k)) for k in ("examples", "output", "model_dir", "chat_template")
                                      if getattr(cfg, k) and "://" not in getattr(cfg, k)})
    check_data(cfg)
    memory.check(cfg)            # printed; a plan over the GPU's memory stops here, before any GPU work
    if held_out_slice(cfg):
        print(f"[audiomill] {cfg.stage}: no {cfg.stage}/eval set; held out for evaluation by content: "
              f"{holdout_plan(cfg).summary()}", flush=True)
    elif not stage_shards(cfg.examples, cfg.stage, held_out=True):
        print(f"[audiomill] {cfg.stage}: no {cfg.stage}/eval set; evaluation skipped (eval_holdout=0)", flush=True)
    config = dataclasses.asdict(cfg)
    if cfg.launcher == "local":
        return train_loop(cfg)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address) if address else ray.init(address="local", include_dashboard=False,
                                                            log_to_driver=True)
    trainer = (_trainer_without_cleaner() if _owns_cluster() else TorchTrainer)(
        ray_train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(name=f"audiomill-{cfg.stage}", storage_path=os.path.abspath(os.path.join(cfg.output, "ray")),
                             failure_config=FailureConfig(max_failures=1),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints or None)),
    )
    os.makedirs(os.path.join(cfg.output, cfg.stage), exist_ok=True)
    with _Echo(os.path.join(cfg.output, cfg.stage, CONSOLE), enabled=echo):
        trainer.fit()
    with open(os.path.join(cfg.output, cfg.stage, "eval.json")) as f:
        return json.load(f)


def _owns_cluster() -> bool:
    """Whether this process started the Ray cluster it is connected to (an embedded one)."""
    from ray._private import worker

    return bool(worker._global_node is not None and worker._global_node.head)


def _trainer_without_cleaner():
    """TorchTrainer without Ray Train's PlacementGroupCleaner, for a cluster this process started.

    The cleaner is a detached actor that asks the State API every second whether the training
    controller is alive, to free its placement group should the controller die. The State API is served
    by the dashboard, which an embedded cluster runs without: every query failed and logged a warning,
    three a second. With the dashboard, its 10 s query outlives the cleaner's 12 s stop on two busy cores
    and the run ends with a traceback. On an embedded cluster the cleaner guards nothing: the cluster, its
    placement groups with it, ends with this process. On a cluster joined by address it stays.
    """
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class EmbeddedTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not isinstance(c, PlacementGroupCleanerCallback)]

    return EmbeddedTorchTrainer


def run_all(cfg: TrainConfig, echo: bool = False, version: str = "") -> dict[str, Any]:
    """pretrain → SFT → DPO, each stage starting from the previous stage's ``stage_checkpoint``; a stage
    without shards is skipped. ``task_weights`` are split by stage (each stage takes the weights of the tasks
    it holds). With ``version`` (the examples' registry version), a finished stage leaves ``done.json`` with
    its config, and a rerun with the same config and version skips it. ``echo`` as in ``run_stage``."""
    if not any(stage_shards(cfg.examples, stage) for stage in STAGES):
        raise TrainDataError(layout_problem(cfg.examples, STAGES))
    foreign = foreign_shards(cfg.examples, STAGES)          # before any stage trains, not when one is reached
    if foreign:
        raise TrainDataError(foreign)
    stages = [stage for stage in STAGES if stage_shards(cfg.examples, stage)]
    weights = stage_weights(cfg, stages)
    results, model_dir = {}, cfg.model_dir
    for stage in STAGES:
        if stage not in stages:
            print(f"[audiomill] no {stage} shards in {cfg.examples}: stage skipped", flush=True)
            continue
        stage_cfg = dataclasses.replace(cfg, stage=stage, model_dir=model_dir, task_weights=weights[stage],
                                        max_steps=cfg.stage_steps.get(stage, cfg.max_steps))
        done = os.path.join(cfg.output, stage, "done.json")
        key = {"config_hash": stage_hash(stage_cfg), "examples": version}
        if version and _done_key(done) == key:
            print(f"[audiomill] train {stage}: already trained for this config and {version}", flush=True)
            with open(done) as f:
                results[stage] = {"eval": json.load(f).get("eval"), "skipped": "already trained"}
        else:
            results[stage] = run_stage(stage_cfg, echo=echo)
            if version:
                with open(done, "w") as f:
                    json.dump({"key": key, "eval": results[stage].get("eval")}, f, indent=2, default=str)
        model_dir = stage_checkpoint(cfg.output, stage)
    return results


def _done_key(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def stage_hash(cfg: TrainConfig) -> str:
    """What a trained stage's result depends on: its config, less where it ran (launcher, workers) and the
    other stages' step counts (``max_steps`` holds this stage's)."""
    import hashlib

    kept = {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in ("launcher", "num_workers", "loader_workers", "stage_steps")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_weights(cfg: TrainConfig, stages: list[str]) -> dict[str, dict[str, float]]:
    """``task_weights`` split by stage: each stage takes the weights of the tasks it holds (a stage none of
    whose tasks is named is not weighted); a task that no stage holds is an error."""
    held = {st: stage_tasks(dataclasses.replace(cfg, stage=st)) for st in stages} if cfg.task_weights else {}
    unknown = sorted(set(cfg.task_weights) - set().union(*held.values())) if held else []
    if unknown:
        raise TrainDataError(f"task_weights names tasks no stage holds: {unknown}; "
                             f"they hold {', '.join(f'{st}: {sorted(t)}' for st, t in held.items())}")
    return {st: {t: w for t, w in cfg.task_weights.items() if t in held.get(st, ())} for st in stages}
