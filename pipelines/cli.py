"""The ``audiomill`` command.

    audiomill curate INPUT... OUTPUT_DIR [--config FILE] [--address ADDR] [key=value ...]
    audiomill train EXAMPLES_DIR OUTPUT_DIR stage=pretrain|sft|dpo [--config FILE] [key=value ...]
    audiomill train-all EXAMPLES_DIR OUTPUT_DIR [--config FILE] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys

from pipelines.config import ConfigError


def _split_positionals(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional words with ``=`` (and no such path) are overrides; the rest are paths."""
    paths, overrides = [], []
    for v in values:
        is_override = "=" in v and not os.path.exists(v) and "://" not in v.split("=", 1)[0]
        (overrides if is_override else paths).append(v)
    return paths, overrides


def _curate(args: argparse.Namespace) -> int:
    from pipelines.curate import CurateConfig, ErrorBudgetExceeded, OutputConflict, run
    from pipelines.config import load_config

    paths, overrides = _split_positionals(args.words)
    extra: dict = {}
    if paths:
        extra["output"] = paths[-1]
        if paths[:-1]:
            extra["inputs"] = paths[:-1]
    if args.address:
        extra["ray"] = {"address": args.address}
    try:
        cfg = load_config(CurateConfig, args.config, overrides, extra)
    except ConfigError as e:
        print(f"audiomill curate: {e}", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except OutputConflict as e:
        print(f"audiomill curate: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"audiomill curate: {e}", file=sys.stderr)
        return 2
    except ErrorBudgetExceeded as e:
        print(f"audiomill curate: stopped: {e}", file=sys.stderr)
        return 3
    return 0


def _train(args: argparse.Namespace) -> int:
    from pipelines.config import load_config
    from trainer.config import TrainConfig

    paths, overrides = _split_positionals(args.words)
    extra: dict = {}
    if len(paths) >= 1:
        extra["examples"] = paths[0]
    if len(paths) >= 2:
        extra["output"] = paths[1]
    problems = [f"unexpected argument {p!r}" for p in paths[2:]]
    try:
        cfg = load_config(TrainConfig, args.config, overrides, extra)
    except ConfigError as e:
        print(f"audiomill {args.command}: {e}", file=sys.stderr)
        return 2
    if problems:
        print(f"audiomill {args.command}: {ConfigError(problems)}", file=sys.stderr)
        return 2
    from trainer.recipe import run_all, run_stage

    result = run_all(cfg) if args.command == "train-all" else {cfg.stage: run_stage(cfg)}
    for stage, r in result.items():
        print(f"[audiomill] {stage}: {r.get('eval')}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiomill", description="Audio-language training data, curated.")
    sub = parser.add_subparsers(dest="command", required=True)
    cur = sub.add_parser("curate", help="raw audio → segmented, deduplicated WebDataset shards",
                         usage="audiomill curate INPUT... OUTPUT_DIR [--config FILE] [--address ADDR] [key=value ...]")
    cur.add_argument("words", nargs="*", metavar="INPUT... OUTPUT_DIR [key=value ...]")
    cur.add_argument("--config", help="YAML config file (see configs/curate.yaml)")
    cur.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    cur.set_defaults(func=_curate)
    for name, help_text in [("train", "train one stage (stage=pretrain|sft|dpo) on example shards"),
                            ("train-all", "pretrain → SFT → DPO on example shards")]:
        tr = sub.add_parser(name, help=help_text,
                            usage=f"audiomill {name} EXAMPLES_DIR OUTPUT_DIR [--config FILE] [key=value ...]")
        tr.add_argument("words", nargs="*", metavar="EXAMPLES_DIR OUTPUT_DIR [key=value ...]")
        tr.add_argument("--config", help="YAML config file (see configs/train.yaml)")
        tr.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
