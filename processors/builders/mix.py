"""The mix of an example set: which segments it uses (target hours per kind), which examples of each task
it keeps (weights per task), and what it achieved (hours, and the template diversity per task).

    selected = select_hours([("seg-1", "speech", 12.0), …], {"speech": 10.0, "sound": 2.0})
    keep("ex-…", 0.5)                       → True for about half of the example ids, the same on every run
    diversity([("asr", "asr.v1.3"), …], {"asr": 12})  → {"asr": {"templates": 9, "of": 12, "entropy_bits": 3.1}}
"""

from __future__ import annotations

import math
from collections import Counter

from processors.builders.pretrain import stable_hash

KINDS = ("speech", "sound", "music", "mixed")


def select_hours(segments: list[tuple[str, str, float]], hours: dict[str, float]) -> set[str]:
    """Keys of the segments to use: per kind with a target, segments in a stable hash order until their
    hours reach it (the last one may pass it); every segment of a kind without a target."""
    out: set[str] = set()
    by_kind: dict[str, list[tuple[str, float]]] = {}
    for key, kind, duration in segments:
        by_kind.setdefault(kind, []).append((key, duration))
    for kind, items in by_kind.items():
        target = hours.get(kind)
        if target is None:
            out.update(k for k, _ in items)
            continue
        total = 0.0
        for key, duration in sorted(items, key=lambda kd: (stable_hash(f"mix/{kd[0]}"), kd[0])):
            if total >= target * 3600:
                break
            out.add(key)
            total += duration
    return out


def keep(example_id: str, weight: float) -> bool:
    """Whether a task weight keeps this example: a stable draw below ``weight`` (1 keeps all, 0 none)."""
    if weight >= 1:
        return True
    return stable_hash(f"weight/{example_id}") / 2**64 < weight


def entropy_bits(counts: Counter) -> float:
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values() if c) if n else 0.0


def diversity(used: list[tuple[str, str]], available: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per task: distinct templates used, how many there are, and the entropy of their use in bits (the
    most is log2 of the number there are)."""
    by_task: dict[str, Counter] = {}
    for task, template in used:
        by_task.setdefault(task, Counter())[template] += 1
    return {task: {"templates": len(c), "of": available.get(task, len(c)), "entropy_bits": round(entropy_bits(c), 3),
                   "max_bits": round(math.log2(max(1, available.get(task, len(c)))), 3)}
            for task, c in sorted(by_task.items())}
