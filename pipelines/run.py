"""``audiomill run CONFIG.yaml [key=value ...]``: raw audio to an evaluated, DPO-trained checkpoint in one
command, on one Ray cluster (embedded by default, ``--address`` or ``ray.address`` for a real one).

    curate (+ labelers) → publish → build → publish → train pretrain → SFT → DPO → eval

One YAML holds it all (``configs/run.yaml``): ``root`` (where each phase writes), ``sources`` or ``inputs``,
the ``curate``, ``build`` and ``train`` settings (each job's own keys), and the ``registry``. Each data
phase's output is published as a version whose parent is the previous phase's. A rerun skips every phase
whose output is complete for the same inputs and config (the jobs' own check; publishing the same content
is a no-op; a trained stage leaves ``done.json`` with its config); after a kill it resumes inside the phase
that was running (the jobs' finished units, the trainer's checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import time
from typing import Any

from pipelines.config import _build
from pipelines.runtime import IngestRayConfig, init_ray, say
from processors.sources import SourceSpec

PHASES = ("curate", "publish segments", "build", "publish examples", "train", "eval")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    root: str = ""                     # each phase writes ROOT/segments, ROOT/examples, ROOT/train, ROOT/eval.json
    name: str = "run"                  # names the versions: NAME (segments) and NAME-examples
    inputs: list[str] = dataclasses.field(default_factory=list)    # raw folders or manifests (or use sources)
    sources: list[SourceSpec] = dataclasses.field(default_factory=list)
    curate: dict[str, Any] = dataclasses.field(default_factory=dict)   # any audiomill curate setting
    build: dict[str, Any] = dataclasses.field(default_factory=dict)    # any audiomill build setting
    train: dict[str, Any] = dataclasses.field(default_factory=dict)    # any audiomill train setting
    registry: str = ""                 # "" → ROOT/registry
    eval_max_examples: int = 200
    ray: IngestRayConfig = IngestRayConfig()

    def paths(self) -> dict[str, str]:
        root = self.root.rstrip("/")
        return {"segments": posixpath.join(root, "segments"), "examples": posixpath.join(root, "examples"),
                "train": posixpath.join(root, "train"), "registry": self.registry or posixpath.join(root, "registry")}

    def curate_config(self, problems: list[str]):
        from pipelines.curate import CurateConfig

        data = {**self.curate, "name": self.name, "output": self.paths()["segments"],
                "ray": dataclasses.asdict(self.ray)}
        if self.inputs:
            data["inputs"] = list(self.inputs)
        if self.sources:
            data["sources"] = [dataclasses.asdict(s) for s in self.sources]
        return _sub(CurateConfig, data, "curate", problems)

    def build_config(self, problems: list[str]):
        from pipelines.build import BuildConfig

        data = {**self.build, "name": f"{self.name}-examples", "inputs": [self.paths()["segments"]],
                "output": self.paths()["examples"], "ray": self.ray.common()}
        # The segments do not exist before the run: only that check is left to the build phase.
        return _sub(BuildConfig, data, "build", problems,
                    ignore=(f"input {self.paths()['segments']!r} is not a finished", "output: "))

    def train_config(self, problems: list[str]):
        from trainer.config import TrainConfig

        data = {**self.train, "examples": self.paths()["examples"], "output": self.paths()["train"]}
        return _sub(TrainConfig, data, "train", problems)

    def validate(self) -> list[str]:
        problems: list[str] = []
        if not self.root:
            problems.append("root: a folder for the run's outputs is required")
        if not self.inputs and not self.sources:
            problems.append("inputs or sources: the raw audio to start from is required")
        for key in ("name", "output", "inputs", "sources"):
            if key in self.curate:
                problems.append(f"curate.{key}: set by the run (use the top-level key)")
        for key in ("inputs", "output", "name"):
            if key in self.build:
                problems.append(f"build.{key}: set by the run")
        for key in ("examples", "output", "stage"):
            if key in self.train:
                problems.append(f"train.{key}: set by the run")
        problems += self.ray.problems()
        if self.root:
            self.curate_config(problems)
            self.build_config(problems)
            self.train_config(problems)
        return problems


def _sub(cls: type, data: dict, section: str, problems: list[str], ignore: tuple[str, ...] = ()):
    """A job's config from the run's section: unknown keys and bad values as ``section.key`` problems."""
    found: list[str] = []
    value = _build(cls, data, section, found)
    if value is not None and not found:
        found += [p for p in value.validate() if not any(p.startswith(i) for i in ignore)]
    problems += [p if p.startswith(section + ".") else f"{section}: {p}" for p in found]
    return value


def run(cfg: RunConfig) -> dict[str, Any]:
    """Every phase, holding ``ROOT/.audiomill-lock`` throughout: the phases' own locks cover curate and build,
    and this one keeps a second run on the same ROOT from training beside the first."""
    from pipelines.output import Output

    with Output(cfg.root, "run").lock():
        return _phases(cfg)


def _phases(cfg: RunConfig) -> dict[str, Any]:
    from pipelines.build import run as build
    from pipelines.curate import run as curate
    from pipelines.evaluate import evaluate_checkpoint, table
    from pipelines.registry import Registry
    from trainer.launch import run_all
    from trainer.checkpoints import stage_checkpoint

    t0 = time.monotonic()
    problems: list[str] = []
    paths = cfg.paths()
    cur, bld, trn = cfg.curate_config(problems), cfg.build_config(problems), cfg.train_config(problems)
    reg = Registry(paths["registry"])
    timings: dict[str, float] = {}
    versions: dict[str, str] = {}

    def phase(n: int, name: str) -> float:
        say(f"phase {n}/{len(PHASES)}: {name}")
        return time.monotonic()

    init_ray(cfg.ray)              # one Ray for every phase, quiet: training lines are echoed from its console.log
    t = phase(1, "curate")
    curate(cur)
    timings["curate"] = time.monotonic() - t
    t = phase(2, "publish segments")
    v, new = reg.publish(paths["segments"], cfg.name)
    versions["segments"] = v.ref
    say(f"{v.ref} {'published' if new else 'already published'}")
    timings["publish segments"] = time.monotonic() - t
    t = phase(3, "build")
    build(bld)
    timings["build"] = time.monotonic() - t
    t = phase(4, "publish examples")
    e, new = reg.publish(paths["examples"], f"{cfg.name}-examples")
    versions["examples"] = e.ref
    say(f"{e.ref} {'published' if new else 'already published'} (parent {', '.join(e.parents)})")
    timings["publish examples"] = time.monotonic() - t
    t = phase(5, "train")
    trained = run_all(trn, echo=True, version=e.ref)
    finals = {stage: stage_checkpoint(paths["train"], stage) for stage in trained}
    timings["train"] = time.monotonic() - t
    t = phase(6, "eval")
    # Each stage's checkpoint on its own held-out sets beside the checkpoint before it; DPO's on the SFT
    # set (what DPO must not cost) and on the held-out pairs.
    rows, prior = [], None
    for stage, final in finals.items():
        rows += evaluate_checkpoint(final, paths["examples"], before=prior, max_examples=cfg.eval_max_examples,
                                    stages=(stage,))
        prior = final
    last = list(finals.values())[-1]
    before = finals.get("sft") if last == finals.get("dpo") else None
    timings["eval"] = time.monotonic() - t
    summary = {"versions": versions, "checkpoint": last, "compared_with": before, "results": rows,
               "phase_seconds": {k: round(v, 1) for k, v in timings.items()},
               "wall_seconds": round(time.monotonic() - t0, 1)}
    with open(posixpath.join(cfg.root, "eval.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print(f"\nheld-out results: each stage's checkpoint under {paths['train']}/<stage>/ (best/, the export with "
          "the best held-out score, else final/), 'before' the one of the stage before it")
    print(table(rows))
    print("\nphase seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"; total {summary['wall_seconds']:.0f}")
    return summary
