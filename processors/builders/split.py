"""The held-out split of an example set: by source recording and by voice, so that no recording and no
voice is in both the training and the held-out examples.

Recordings are joined into groups (union-find) when a voice of one is within ``same_voice`` cosine
similarity of a voice of the other (``Speakers.embedding``, the main speaker of each segment). Whole
groups then go to the held-out side, in a stable hash order, until it holds ``fraction`` of the hours.

    groups = voice_groups({"sha-a": [emb, …], "sha-b": […]}, same_voice=0.8)   → {"sha-a": "sha-a", "sha-b": "sha-a"}
    held = held_out({"sha-a": 1.5, …}, fraction=0.1)                        → {"sha-c", …}
"""

from __future__ import annotations

import numpy as np

from processors.builders.pretrain import stable_hash

BLOCK = 4096        # voices compared per block of the similarity matrix


def voices(embeddings: list[np.ndarray], same_voice: float) -> list[np.ndarray]:
    """A recording's distinct voices: each embedding not within ``same_voice`` of one already kept."""
    kept: list[np.ndarray] = []
    for e in embeddings:
        e = np.asarray(e, np.float32)
        norm = float(np.linalg.norm(e))
        if norm == 0 or not np.isfinite(norm):
            continue
        e = e / norm
        if all(float(k @ e) < same_voice for k in kept):
            kept.append(e)
    return kept


def voice_groups(recordings: dict[str, list[np.ndarray]], same_voice: float) -> dict[str, str]:
    """{recording: group id}: the group id is its smallest recording id, so it does not depend on order."""
    names = sorted(recordings)
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    owner, rows = [], []
    for n in names:
        for v in voices(recordings[n], same_voice):
            owner.append(n)
            rows.append(v)
    if rows:
        matrix = np.stack(rows)
        for start in range(0, len(rows), BLOCK):
            sims = matrix[start:start + BLOCK] @ matrix.T
            for i, j in zip(*np.nonzero(sims >= same_voice)):
                a, b = root(owner[start + i]), root(owner[j])
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {n: root(n) for n in names}


def held_out(group_hours: dict[str, float], fraction: float) -> set[str]:
    """Groups for the held-out side: in stable hash order until they hold ``fraction`` of all hours. With
    a fraction above 0, at least one group is held out and at least one is not (when there are two)."""
    if fraction <= 0 or len(group_hours) < 2:
        return set()
    total = sum(group_hours.values())
    chosen: set[str] = set()
    held = 0.0
    for g in sorted(group_hours, key=lambda g: (stable_hash(f"split/{g}"), g)):
        if chosen and held >= fraction * total:
            break
        if len(chosen) == len(group_hours) - 1:
            break
        chosen.add(g)
        held += group_hours[g]
    return chosen
