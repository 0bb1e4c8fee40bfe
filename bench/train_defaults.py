"""What the default training config gives on content never seen in training.

    python bench/train_defaults.py [--words 80] [--held-out 16] [--voices 4] [--max-steps 1500] [key=value ...]

Spoken-language ID from espeak-ng words in four languages (chance 0.25): ``--words`` words per language, of
which the last ``--held-out`` are never trained on; every word is spoken by ``--voices`` voice variants. The
training set has no held-out split of its own, so the trainer holds out groups by content. Runs
``audiomill train-all EX OUT preset=tiny max_steps=N`` with the defaults (plus any ``key=value``), then prints
for each stage's ``final/`` and ``best/``: accuracy on the unseen words beside the trainer's own held-out
score (held-out groups of training words' content, so it should tell the same story).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.demo_train import build_language_id  # noqa: E402


def add_data_args(ap: argparse.ArgumentParser) -> None:
    """The spoken-language ID set's size: words per language, words never trained on, voices."""
    ap.add_argument("--words", type=int, default=80)
    ap.add_argument("--held-out", type=int, default=16)
    ap.add_argument("--voices", type=int, default=4)


def language_id_data(root: Path, args) -> tuple[Path, Path]:
    """(training examples, unseen words) under ``root``, built once: the training set has no held-out split of
    its own; the unseen words, spoken by every voice, are ``unseen/<stage>/eval``."""
    ex, test = root / "examples", root / "unseen"
    if not (ex / "manifest.json").exists():
        counts = build_language_id(ex, held_out=args.held_out, words=args.words, voices=args.voices,
                                   held_out_voices=args.voices, held_out_root=test)
        print(f"[bench] examples: {json.dumps(counts)}", flush=True)
    return ex, test


def unseen_accuracy(checkpoint: Path, test: Path, stage: str) -> tuple[float, int]:
    from pipelines.evaluate import evaluate_checkpoint

    rows = evaluate_checkpoint(str(checkpoint), str(test), max_examples=100000, stages=(stage,))
    row = next(r for r in rows if r["task"] == "lid")
    return row["value"], row["n"]


def curve(stage_dir: Path, test: Path, stage: str) -> list[tuple[int, float, float | None]]:
    """(step, unseen accuracy, the trainer's own held-out score) of every checkpoint the stage kept: its
    weights (``state.pt``) loaded into the final export's model."""
    import shutil

    import torch

    from trainer.model import load_pretrained

    own = {}
    if (stage_dir / "held_out.jsonl").exists():
        own = {r["step"]: r["score"] for r in map(json.loads, (stage_dir / "held_out.jsonl").read_text().splitlines())}
    rows = []
    for state_pt in sorted((stage_dir / "checkpoints").glob("step-*/state.pt")):
        step = int(state_pt.parent.name.split("-")[1])
        model, processor = load_pretrained(str(stage_dir / "final"))
        model.load_state_dict(torch.load(state_pt, weights_only=True, map_location="cpu")["model"])
        folder = stage_dir / f"curve-{step}"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        rows.append((step, unseen_accuracy(folder, test, stage)[0], own.get(step)))
        shutil.rmtree(folder)
    return rows


def own_score(stage_dir: Path, which: str) -> float | None:
    """The trainer's own held-out accuracy of ``final/`` (its eval.json) or of ``best/`` (best.json); after
    DPO, on the SFT held-out set."""
    path = stage_dir / "best" / "best.json" if which == "best" else stage_dir / "eval.json"
    if not path.exists():
        return None
    tasks = json.loads(path.read_text())["eval"].get("tasks") or {}
    return tasks["lid"]["accuracy"] if "lid" in tasks else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(ap)
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--curve", action="store_true", help="also score every checkpoint on the unseen words")
    ap.add_argument("--skip-training", action="store_true", help="score what --keep already holds")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    ap.add_argument("overrides", nargs="*", help="key=value for train-all")
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        (ex, test), out = language_id_data(root, args), root / "train"
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "pipelines.cli", "train-all", str(ex), str(out), "preset=tiny",
               f"max_steps={args.max_steps}", *args.overrides]
        print("[bench] " + " ".join(cmd[2:]), flush=True)
        if not args.skip_training:
            subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
        train_s = time.monotonic() - t0
        print("\nspoken-language ID, chance 0.25; unseen = words never trained on; own = the trainer's held-out "
              "score (groups of training content it held out)")
        print(f"{'checkpoint':16s} {'step':>5s} {'unseen':>7s} {'n':>4s} {'own':>6s}")
        table = {}
        for stage in ("pretrain", "sft", "dpo"):
            stage_dir = out / stage
            if not (stage_dir / "eval.json").exists():
                continue
            for which in ("final", "best"):
                folder = stage_dir / which
                if not (folder / "config.json").exists():
                    continue
                acc, n = unseen_accuracy(folder, test, "pretrain" if stage == "pretrain" else "sft")
                own = own_score(stage_dir, which)
                step = (json.loads((folder / "best.json").read_text())["step"] if which == "best"
                        else json.loads((stage_dir / "eval.json").read_text())["steps"])
                table[f"{stage}/{which}"] = {"step": step, "unseen": acc, "n": n, "own": own}
                print(f"{stage + '/' + which:16s} {step:5d} {acc:7.3f} {n:4d} {'-' if own is None else f'{own:.3f}':>6s}")
        if args.curve:
            for stage in ("pretrain", "sft", "dpo"):
                if (out / stage / "final").exists():
                    for step, acc, own in curve(out / stage, test, "pretrain" if stage == "pretrain" else "sft"):
                        print(f"curve {stage:8s} step {step:5d} unseen {acc:.3f} own {own if own is None else round(own, 3)}")
        print(f"[bench] train-all {train_s:.0f} s")
        print(json.dumps(table))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raise SystemExit(main())
