"""Where a stage's examples are and what they hold: the shard folders, the held-out split by content, and
the checks made before any training (a stage without shards, another stage's shards, unknown task weights)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

from trainer import holdout
from trainer.config import STAGES, TrainConfig
from trainer.data import SkipCounter, read_all
from trainer.holdout import HoldoutPlan, load_or_plan


class TrainDataError(ValueError):
    """The example set cannot be trained on as configured (no shards, a task weight for an absent task)."""


def stage_shards(examples: str, stage: str, held_out: bool = False) -> list[str]:
    folder = os.path.join(examples, stage, "eval") if held_out else os.path.join(examples, stage)
    return sorted(glob.glob(os.path.join(folder, "*.tar")))


def layout_problem(examples: str, stages: tuple[str, ...] | list[str]) -> str:
    """What EXAMPLES_DIR should hold and what it holds, for a message."""
    expected = ", ".join(f"{s}/*.tar" for s in stages)
    if not os.path.isdir(examples):
        return f"EXAMPLES_DIR {examples} does not exist; expected a folder with {expected} (held-out sets in <stage>/eval/)"
    found = sorted(os.listdir(examples))[:8]
    return (f"EXAMPLES_DIR {examples} has no example shards for {', '.join(stages)}: expected {expected} "
            f"(held-out sets in <stage>/eval/*.tar); found {found or 'nothing'}")


def corpus_texts(examples: str, errors: SkipCounter | None = None) -> Iterator[str]:
    """Every prompt, target and turn in the training shards of all stages (for the tokenizer); unreadable
    shards and samples are skipped and counted, as in training."""
    errors = errors or SkipCounter()
    for stage in STAGES:
        for ex, _ in read_all(stage_shards(examples, stage), errors):
            yield from (ex.prompt, ex.target, ex.chosen, ex.rejected)
            for m in ex.messages:
                for c in m["content"] if not isinstance(m["content"], str) else [{"type": "text", "text": m["content"]}]:
                    if c["type"] == "text":
                        yield c["text"]


def held_out_slice(cfg: TrainConfig) -> bool:
    """Without a ``<stage>/eval`` set, groups of examples that share a source recording or content are held
    out of training for evaluation (``trainer/holdout.py``)."""
    return cfg.eval_holdout > 0 and not stage_shards(cfg.examples, cfg.stage, held_out=True)


def holdout_plan(cfg: TrainConfig) -> HoldoutPlan:
    """The held-out groups, planned over the training shards of every stage (one split for all stages)."""
    urls = [u for stage in STAGES for u in stage_shards(cfg.examples, stage)]
    return load_or_plan(cfg.output, urls, cfg.eval_holdout, cfg.seed, cfg.max_bad_fraction)


def in_holdout(ex, cfg: TrainConfig) -> bool:
    return holdout.in_holdout(ex, holdout_plan(cfg).keys)


def stage_tasks(cfg: TrainConfig, limit: int = 2000) -> set[str]:
    """The tasks the stage's training shards hold: from the example layer's manifest, else read."""
    import json

    manifest = os.path.join(cfg.examples, "manifest.json")
    if os.path.exists(manifest):
        counts = json.load(open(manifest)).get("summary", {}).get("examples_by_stage_task", {})
        tasks = {k.split("/")[-1] for k in counts if k.split("/")[0] == cfg.stage and "/eval/" not in k}
        if tasks:
            return tasks
    tasks = set()
    for n, (ex, _) in enumerate(read_all(stage_shards(cfg.examples, cfg.stage))):
        tasks.add(ex.task)
        if n >= limit:
            break
    return tasks


def foreign_shards(examples: str, stages) -> str | None:
    """Why the folders of ``stages`` (training and held-out) do not each hold their own stage's shards, or
    None: a shard whose first example is of another stage. One sample read per shard."""
    found = []
    for stage in stages:
        for url in stage_shards(examples, stage) + stage_shards(examples, stage, held_out=True):
            first = next(read_all([url]), None)
            if first is not None and first[0].stage != stage:
                found.append(f"{os.path.relpath(url, examples)} holds {first[0].stage} examples")
    if not found:
        return None
    return (f"{examples} holds shards in another stage's folder ({'; '.join(found[:3])}"
            f"{' …' if len(found) > 3 else ''}); each stage's shards go in its own folder")


def check_data(cfg: TrainConfig) -> None:
    """Before any training: the stage has shards, each of them its own stage's, and task_weights name tasks
    the data holds."""
    if not stage_shards(cfg.examples, cfg.stage):
        raise TrainDataError(layout_problem(cfg.examples, [cfg.stage]))
    foreign = foreign_shards(cfg.examples, [cfg.stage])
    if foreign:
        raise TrainDataError(foreign)
    if cfg.task_weights:
        tasks = stage_tasks(cfg)
        unknown = sorted(set(cfg.task_weights) - tasks)
        if unknown:
            raise TrainDataError(f"task_weights names tasks the {cfg.stage} shards do not hold: {unknown}; "
                                 f"they hold {sorted(tasks)}")
        if not any(cfg.task_weights.get(t, 0.0) > 0 for t in tasks):
            raise TrainDataError(f"task_weights gives every task of the {cfg.stage} shards weight 0")

