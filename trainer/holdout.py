"""The automatic held-out split, by content: used when a stage has no ``<stage>/eval`` set.

Holding out a random share of examples measures memory when the data holds many recordings of one content
(one word by several voices, one instruction by several speakers): the held-out recordings are of words the
model trained on. So examples are grouped by what they share, and whole groups are held out:

- the source recording (provenance ``sources``, else its segments, else its audio's segment ids);
- the transcript of its audio (provenance ``transcript``), the spoken instruction it answers (provenance
  ``instruction``), and for a transcription task its target text.

Examples that share any one of these are one group (union-find over the training shards of every stage, so
a word held out of SFT is held out of pretraining and DPO too). A task's answer that is a class label
(a language, an event name) is not grouped on: that would hold out the class itself.

Groups are taken in a seeded order until the share is reached; a group larger than twice the share is never
taken, so one giant group cannot become the whole held-out set. The plan (the held-out keys, hashed) is
written once to ``OUTPUT/holdout.json`` and read by every worker and by evaluation.

    plan = plan_holdout(["ex/pretrain/a.tar", "ex/sft/b.tar"], share=0.05, seed=0)
    in_holdout(example, plan.keys)   → True for every example of a held-out group
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator

from schemas.example import Example
from trainer.config import TRANSCRIPTION_TASKS
from trainer.data import reference_answer
PLAN_FILE = "holdout.json"


def _text(s: str) -> str:
    return " ".join(s.lower().split())


def content_keys(ex: Example) -> list[str]:
    """The keys that tie ``ex`` to other examples: its source recordings and its content. Hashed to 16 hex
    digits ("a1b2…"), so that the plan file stays small."""
    prov = ex.provenance or {}
    sources = prov.get("sources") or prov.get("segments") or [a.segment_id for a in ex.audio] or [ex.id]
    keys = [f"source:{s}" for s in sources]
    if prov.get("transcript"):
        keys.append(f"text:{_text(str(prov['transcript']))}")
    if prov.get("instruction"):
        keys.append(f"instruction:{prov['instruction']}")
    if ex.task in TRANSCRIPTION_TASKS and reference_answer(ex):
        keys.append(f"text:{_text(reference_answer(ex))}")
    return [hashlib.sha256(k.encode()).hexdigest()[:16] for k in keys]


@dataclasses.dataclass(frozen=True)
class HoldoutPlan:
    keys: frozenset[str]      # every key of every held-out group
    examples: int             # examples read
    held_out: int             # examples held out
    groups: int               # groups found
    held_out_groups: int

    def summary(self) -> str:
        return (f"{self.held_out} of {self.examples} examples ({self.held_out_groups} of {self.groups} groups "
                "sharing a source recording, transcript or instruction)")


def plan_holdout(examples: Iterable[Example], share: float, seed: int) -> HoldoutPlan:
    """Union-find over the examples' keys, then whole groups held out in a seeded order up to ``share``."""
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    firsts: list[str] = []          # one key per example, to count group sizes
    for ex in examples:
        keys = content_keys(ex)
        for k in keys:
            parent.setdefault(k, k)
        root = find(keys[0])
        for k in keys[1:]:
            other = find(k)
            if other != root:
                parent[max(root, other)] = min(root, other)
                root = min(root, other)
        firsts.append(keys[0])
    sizes: dict[str, int] = {}
    for k in firsts:
        r = find(k)
        sizes[r] = sizes.get(r, 0) + 1
    target = share * len(firsts)
    cap = max(1, math.ceil(2 * target))
    order = sorted(sizes, key=lambda r: hashlib.sha256(f"{seed}:{r}".encode()).digest())
    chosen, held = set(), 0
    for r in order:
        if held >= target:
            break
        if sizes[r] <= cap:
            chosen.add(r)
            held += sizes[r]
    keys = frozenset(k for k in parent if find(k) in chosen)
    return HoldoutPlan(keys, len(firsts), held, len(sizes), len(chosen))


def in_holdout(ex: Example, keys: frozenset[str]) -> bool:
    return any(k in keys for k in content_keys(ex))


def read_examples(urls: list[str], errors) -> Iterator[Example]:
    """The example records of ``urls`` without decoding their audio; unreadable ones are counted."""
    import webdataset as wds

    if not urls:
        return
    for sample in wds.DataPipeline(wds.SimpleShardList(sorted(urls)), wds.tarfile_to_samples(handler=errors)):
        try:
            yield Example.from_json(sample["json"])
        except (KeyError, ValueError, TypeError) as e:
            errors(e)


def fingerprint(urls: list[str], share: float, seed: int) -> str:
    """What the plan depends on: the shards (name and size), the share and the seed."""
    h = hashlib.sha256(f"{share}:{seed}".encode())
    for u in sorted(urls):
        h.update(f"{os.path.basename(os.path.dirname(u))}/{os.path.basename(u)}:{os.path.getsize(u)}".encode())
    return h.hexdigest()[:16]


def load_or_plan(output: str, urls: list[str], share: float, seed: int, max_bad_fraction: float = 1.0) -> HoldoutPlan:
    """The plan in ``OUTPUT/holdout.json`` when it was made for these shards, share and seed; else a new
    plan, written there (atomically). Deterministic, so a worker that plans again gets the same keys."""
    return _load_or_plan(output, fingerprint(urls, share, seed), tuple(sorted(urls)), share, seed, max_bad_fraction)


@functools.lru_cache(maxsize=4)
def _load_or_plan(output: str, fp: str, urls: tuple[str, ...], share: float, seed: int,
                  max_bad_fraction: float) -> HoldoutPlan:
    from trainer.data import SkipCounter

    path = os.path.join(output, PLAN_FILE)
    try:
        with open(path) as f:
            found = json.load(f)
        if found.get("fingerprint") == fp:
            return HoldoutPlan(frozenset(found["keys"]), found["examples"], found["held_out"], found["groups"],
                               found["held_out_groups"])
    except (OSError, ValueError, KeyError):
        pass
    plan = plan_holdout(read_examples(list(urls), SkipCounter(max_bad_fraction)), share, seed)
    record = {**dataclasses.asdict(plan), "fingerprint": fp, "share": share, "seed": seed, "keys": sorted(plan.keys),
              "grouped_by": "source recording, transcript, spoken instruction, transcription target"}
    os.makedirs(output, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)
    return plan
