"""``audiomill eval CHECKPOINT EXAMPLES_OR_VERSION [--before CHECKPOINT]``: score a checkpoint on the held-out
examples of every stage with label-grounded metrics (the trainer's own: WER for transcription, F1 for
sound events, keyword grounding for voice chat, exact-match accuracy for the rest, each beside its chance
level; analysis chats scored per kind of question; reward accuracy on held-out DPO pairs), beside the scores of
the checkpoint before the stage when one is given. Tasks are named after AIR-Bench's foundation and chat
categories where they match (the benchmark of the Qwen2-Audio report).

    rows = evaluate_checkpoint("train/dpo/final", "examples/", before="train/sft/final")
    print(table(rows))
"""

from __future__ import annotations

import dataclasses
from typing import Any

from schemas.example import STAGES

AIR_BENCH = {
    "lid": "Foundation: spoken language identification",
    "speaker": "Foundation: speaker number verification (+ gender)",
    "emotion": "Foundation: emotion recognition",
    "sound_events": "Foundation: vocal sound / acoustic scene classification",
    "music": "Foundation: music QA",
    "asr": "ASR (WER)",
    "s2tt": "Speech translation",
    "caption": "Audio captioning",
    "timestamps": "Foundation: speech / audio grounding",
    "analysis": "Chat: speech, sound and music",
    "compare": "Chat: mixed audio (two clips)",
    "voice_chat": "Chat: speech (spoken instruction)",
    "mixed_scene": "Chat: mixed audio",
}
# An analysis chat's last question, by topic (``trainer.scoring.eval_task``): the foundation task it asks.
AIR_BENCH.update({
    "analysis/language": "Foundation: spoken language identification (in chat)",
    "analysis/events": "Foundation: vocal sound / acoustic scene classification (in chat)",
    "analysis/speakers": "Foundation: speaker number verification (in chat)",
    "analysis/emotion": "Foundation: emotion recognition (in chat)",
    "analysis/music": "Foundation: music QA (in chat)",
    "analysis/transcript": "Chat: speech (what is said)",
})
CHANCE = {"f1": "chance_f1", "grounded": "chance_grounded"}


def evaluate_checkpoint(checkpoint: str, examples: str, before: str | None = None,
                        max_examples: int = 200, registry: str | None = None,
                        stages: tuple[str, ...] = STAGES) -> list[dict[str, Any]]:
    """One row per (stage, task) with a held-out set among ``stages``: metric, value, chance, and the value
    before. Each checkpoint is loaded once."""
    import torch

    from pipelines.versions import resolve
    from trainer.config import TrainConfig
    from trainer.model import checkpoint_problem, load_pretrained
    from trainer.scoring import evaluate
    from trainer.layout import foreign_shards, stage_shards

    problems = [p for p in (checkpoint_problem(checkpoint, "CHECKPOINT"),
                            before and checkpoint_problem(before, "--before")) if p]
    if problems:
        raise ValueError("; ".join(problems))
    root, _ = resolve(examples, registry)
    stages = [s for s in stages if stage_shards(root, s, held_out=True)]
    foreign = foreign_shards(root, stages)
    if foreign:
        raise ValueError(foreign)
    if not stages:
        return []
    cpu = torch.device("cpu")
    model, processor = load_pretrained(checkpoint)
    prior, prior_processor = load_pretrained(before) if before else (None, None)
    rows = []
    for stage in stages:
        cfg = dataclasses.replace(TrainConfig(examples=root, output="", stage=stage), eval_max_examples=max_examples,
                                  eval_holdout=0.0)
        if stage == "dpo":
            if prior is None:
                continue                     # reward accuracy needs the reference (--before)
            # After DPO: generation on the SFT held-out set beside the reference's (unless the sft rows
            # above already hold it), and reward accuracy on the held-out pairs.
            fresh = "sft" not in stages
            after = evaluate(cfg, model, prior.eval(), processor, cpu, before=fresh, generate=fresh)
            if fresh:
                rows += _rows("dpo", after.get("tasks", {}), after.get("tasks_before", {}))
            rows.append({"stage": stage, "task": "pairs", "category": "Preference (held-out DPO pairs)",
                         "metric": "reward accuracy", "value": after["reward_accuracy"], "chance": 0.5,
                         "before": 0.5, "n": after["examples"]})    # the reference against itself: all ties
            rows.append({"stage": stage, "task": "pairs/likelihood", "category": "Preference: chosen more likely than rejected",
                         "metric": "preference acc.", "value": after["preference_accuracy"], "chance": 0.5,
                         "before": after["preference_accuracy_before"], "n": after["examples"]})
            continue
        after = evaluate(cfg, model, None, processor, cpu)
        earlier = evaluate(cfg, prior, None, prior_processor, cpu) if prior is not None else {}
        rows += _rows(stage, after.get("tasks", {}), earlier.get("tasks", {}))
    return rows


def _rows(stage: str, after: dict[str, dict], before: dict[str, dict]) -> list[dict[str, Any]]:
    """A row per task: its headline metric, chance level and the value before."""
    from trainer.scoring import headline_metric

    rows = []
    for task, r in sorted(after.items()):
        metric = headline_metric(r)
        rows.append({"stage": stage, "task": task, "category": AIR_BENCH.get(task, task), "metric": metric,
                     "value": r[metric], "chance": r.get(CHANCE.get(metric, "chance")),
                     "before": before.get(task, {}).get(metric), "n": r["n"]})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    head = f"{'stage/task':<24}{'category':<56}{'metric':<17}{'value':>8}{'chance':>8}{'before':>8}{'n':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['stage'] + '/' + r['task']:<24}{r['category'][:55]:<56}{r['metric']:<17}{f(r['value']):>8}"
                     f"{f(r['chance']):>8}{f(r['before']):>8}{r['n']:>6}")
    return "\n".join(lines)
