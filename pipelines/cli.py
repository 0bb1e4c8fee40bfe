"""The ``audiomill`` command (argument parsing and exit codes only; the jobs live beside it).

    audiomill curate INPUT... OUTPUT_DIR [--config FILE] [--address ADDR] [key=value ...]
    audiomill label SEGMENTS_DIR OUTPUT_DIR [--config FILE] [--address ADDR] [key=value ...]
    audiomill build SEGMENTS_DIR... OUTPUT_DIR [--config FILE] [--address ADDR] [key=value ...]
    audiomill publish OUTPUT_DIR REGISTRY [--name NAME]
    audiomill versions REGISTRY [NAME]
    audiomill verify REGISTRY NAME@VERSION
    audiomill diff A B [--registry REGISTRY]            (A, B: NAME@VERSION or an output folder)
    audiomill lineage NAME@VERSION [KEY] --registry REGISTRY
    audiomill export VERSION_OR_DIR ms-swift|llama-factory|hf OUT [--registry REGISTRY]
    audiomill gc REGISTRY NAME@VERSION
    audiomill run CONFIG.yaml [--address ADDR] [key=value ...]
    audiomill eval CHECKPOINT EXAMPLES_OR_VERSION [--before CHECKPOINT] [--registry REGISTRY]
    audiomill train EXAMPLES_DIR OUTPUT_DIR stage=pretrain|sft|dpo [--config FILE] [key=value ...]
    audiomill train-all EXAMPLES_DIR OUTPUT_DIR [--config FILE] [key=value ...]

Exit codes: 0 done; 1 verify found problems; 2 bad command line, config or OUTPUT_DIR; 3 stopped by the error budget; 4 a file
system error (disk full, read-only); 5 workers kept dying; 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys

from pipelines.config import ConfigError

EXIT_USAGE, EXIT_BUDGET, EXIT_IO, EXIT_WORKERS, EXIT_INTERRUPTED = 2, 3, 4, 5, 130


def _split_positionals(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional words with ``=`` (and no such path) are overrides; the rest are paths."""
    paths, overrides = [], []
    for v in values:
        is_override = "=" in v and not os.path.exists(v) and "://" not in v.split("=", 1)[0]
        (overrides if is_override else paths).append(v)
    return paths, overrides


def _fail(command: str, message: str, code: int) -> int:
    first, _, rest = str(message).partition("\n")
    print(f"audiomill {command}: {first}" + (f"\n{rest}" if rest else ""), file=sys.stderr)
    return code


_ERRNO_RE = re.compile(r"(\w*Error): \[Errno (\d+)\] ([^:\n]+)(?:: '([^'\n]*)')?")


def io_cause(e: BaseException) -> OSError | None:
    """The file-system error behind ``e``, if any. Ray Data passes a worker's exception on as a
    ``UserCodeException`` whose cause does not survive pickling, so the worker's traceback text, which it
    keeps, is read for the error as a last resort."""
    cause = _cause(e, OSError)
    if cause is not None and cause.errno is not None:
        return cause
    m = _ERRNO_RE.search(str(e))
    return OSError(int(m.group(2)), m.group(3), m.group(4)) if m else None


def _cause(e: BaseException, kind: type) -> BaseException | None:
    """``e`` or the exception behind it (Ray Train wraps a worker's) that is a ``kind``."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def _io_message(e: OSError) -> str:
    where = f" ({e.filename})" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"no space left on the device{where}; free some space and rerun (finished work is kept)"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where}: {e.strerror}"
    return f"file system error{where}: {e.strerror}"


def _job(command: str, go, interrupted: str = "finished work is kept") -> int:
    """Run a data job (``go()`` loads its config and runs it) and turn its failures into exit codes."""
    from pipelines.curate import ErrorBudgetExceeded
    from pipelines.output import OutputError
    from pipelines.registry import RegistryError
    from pipelines.stage import PassFailed
    from trainer.memory import DoesNotFit

    try:
        go()
    except (ConfigError, OutputError, RegistryError, DoesNotFit) as e:
        return _fail(command, str(e), EXIT_USAGE)
    except ErrorBudgetExceeded as e:
        return _fail(command, f"stopped: {e}", EXIT_BUDGET)
    except PassFailed as e:
        return _fail(command, str(e), EXIT_WORKERS)
    except KeyboardInterrupt:
        return _fail(command, f"interrupted; rerun the same command to continue ({interrupted})", EXIT_INTERRUPTED)
    except Exception as e:  # a file-system error may arrive wrapped by Ray; anything else is a bug
        cause = io_cause(e)
        if cause is None:
            raise
        return _fail(command, _io_message(cause), EXIT_IO)
    return 0


def _inputs_and_output(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """``INPUT... OUTPUT_DIR [key=value ...]`` → (config values, overrides)."""
    paths, overrides = _split_positionals(args.words)
    extra: dict = {}
    if paths:
        extra["output"] = paths[-1]
        if paths[:-1]:
            extra["inputs"] = paths[:-1]
    if args.address:
        extra["ray"] = {"address": args.address}
    return extra, overrides


def _curate(args: argparse.Namespace) -> int:
    from pipelines.config import load_config
    from pipelines.curate import CurateConfig, run

    extra, overrides = _inputs_and_output(args)
    return _job("curate", lambda: run(load_config(CurateConfig, args.config, overrides, extra)))


def _label(args: argparse.Namespace) -> int:
    from pipelines.config import load_config
    from pipelines.label import LabelConfig, run

    paths, overrides = _split_positionals(args.words)
    extra: dict = {}
    if len(paths) >= 1:
        extra["input"] = paths[0]
    if len(paths) >= 2:
        extra["output"] = paths[1]
    if args.address:
        extra["ray"] = {"address": args.address}
    problems = [f"unexpected argument {p!r}" for p in paths[2:]]

    def go() -> None:
        cfg = load_config(LabelConfig, args.config, overrides, extra)
        if problems:
            raise ConfigError(problems)
        run(cfg)

    return _job("label", go)


def _build(args: argparse.Namespace) -> int:
    from pipelines.build import BuildConfig, run
    from pipelines.config import load_config

    extra, overrides = _inputs_and_output(args)
    return _job("build", lambda: run(load_config(BuildConfig, args.config, overrides, extra)))


def _run(args: argparse.Namespace) -> int:
    from pipelines.config import load_config
    from pipelines.run import RunConfig, run

    paths, overrides = _split_positionals(args.words)
    if len(paths) != 1:
        return _fail("run", "give one CONFIG.yaml (see configs/run.yaml)", EXIT_USAGE)
    extra = {"ray": {"address": args.address}} if args.address else {}
    return _job("run", lambda: run(load_config(RunConfig, paths[0], overrides, extra)), "finished phases are skipped")


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
        return _fail(args.command, str(e), EXIT_USAGE)
    if problems:
        return _fail(args.command, str(ConfigError(problems)), EXIT_USAGE)
    from trainer.data import TooMuchBadData
    from trainer.layout import TrainDataError
    from trainer.launch import run_all, run_stage
    from trainer.memory import DoesNotFit

    try:
        result = run_all(cfg) if args.command == "train-all" else {cfg.stage: run_stage(cfg)}
    except (TrainDataError, DoesNotFit) as e:
        return _fail(args.command, str(e), EXIT_USAGE)
    except KeyboardInterrupt as e:
        return _fail(args.command, f"{e or 'interrupted'}; rerun the same command to resume", EXIT_INTERRUPTED)
    except Exception as e:
        bad = _cause(e, TooMuchBadData)
        if bad is None:
            raise
        return _fail(args.command, f"stopped: {bad}", EXIT_BUDGET)
    for stage, r in result.items():
        print(f"[audiomill] {stage}: {r.get('eval')}", flush=True)
    return 0


def _versions_cmd(args: argparse.Namespace) -> int:
    """publish, versions, verify, diff, lineage, export, gc: one line of error on failure, exit 2."""
    import json

    from pipelines.registry import Registry, RegistryError

    if getattr(args, "registry", None) is None and args.command in ("lineage", "diff", "export", "eval"):
        args.registry = os.environ.get("AUDIOMILL_REGISTRY") or None
    if args.command == "lineage" and not args.registry:
        return _fail(args.command, "give the registry: --registry REGISTRY or AUDIOMILL_REGISTRY", EXIT_USAGE)
    try:
        if args.command == "publish":
            v, new = Registry(args.registry).publish(args.output, args.name or "")
            print(f"{'published' if new else 'already published'} {v.ref} ({v.layer}, {len(v.files)} files)")
            print(f"card: {Registry(args.registry).url_of(v.name, v.data, 'README.md')}")
        elif args.command == "versions":
            for v in Registry(args.registry).versions(args.name):
                print(f"{v.ref:<48}{v.layer:<10}{v.created}  parents: {', '.join(v.parents) or '-'}")
        elif args.command == "verify":
            from pipelines.versions import verify

            problems = verify(args.registry, args.ref)
            for p in problems:
                print(f"  - {p}")
            print(f"{args.ref}: {'OK' if not problems else f'{len(problems)} problems'}")
            return 1 if problems else 0
        elif args.command == "diff":
            from pipelines.versions import diff

            d = diff(args.a, args.b, args.registry)
            print(f"{args.a} → {args.b}: {len(d['added'])} added, {len(d['removed'])} removed, {len(d['changed'])} changed")
            for what in ("added", "removed", "changed"):
                for key in d[what][:20]:
                    print(f"  {what:<8}{key}")
            for by, rows in d["hours"].items():
                print(f"hours by {by}:")
                for k, h in rows.items():
                    print(f"  {k:<32}{h['a']:>10.4f}{h['b']:>10.4f}{h['change']:>+10.4f}")
        elif args.command == "lineage":
            from pipelines.versions import lineage

            print(json.dumps(lineage(args.registry, args.ref, args.key), indent=2, ensure_ascii=False, default=str))
        elif args.command == "export":
            from pipelines.export import export

            for line in export(args.source, args.format, args.out, args.registry):
                print(line)
        elif args.command == "eval":
            import json

            from pipelines.evaluate import evaluate_checkpoint, table

            rows = evaluate_checkpoint(args.checkpoint, args.examples, args.before, args.max_examples, args.registry)
            if not rows:
                raise ValueError(f"{args.examples} has no held-out sets (<stage>/eval/) to score on")
            print(table(rows))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=2)
        elif args.command == "gc":
            Registry(args.registry).gc(args.ref)
            print(f"deleted {args.ref}")
    except (RegistryError, ValueError, FileNotFoundError) as e:
        return _fail(args.command, str(e), EXIT_USAGE)
    except ImportError as e:              # an fsspec URL whose filesystem package is not installed
        return _fail(args.command, f"{e} (the s3 and gcs extras install them)", EXIT_USAGE)
    except OSError as e:                  # a read-only or full store: what is published stays whole
        return _fail(args.command, _io_message(e), EXIT_IO)
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
    lab = sub.add_parser("label", help="re-label a segments corpus: new labels, same audio, a new version",
                         usage="audiomill label SEGMENTS_DIR OUTPUT_DIR [--config FILE] [--address ADDR] [key=value ...]")
    lab.add_argument("words", nargs="*", metavar="SEGMENTS_DIR OUTPUT_DIR [key=value ...]")
    lab.add_argument("--config", help="YAML config file (see configs/label.yaml)")
    lab.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    lab.set_defaults(func=_label)
    bld = sub.add_parser("build", help="labelled segments → pretrain, SFT and DPO example shards",
                         usage="audiomill build SEGMENTS_DIR... OUTPUT_DIR [--config FILE] [--address ADDR] [key=value ...]")
    bld.add_argument("words", nargs="*", metavar="SEGMENTS_DIR... OUTPUT_DIR [key=value ...]")
    bld.add_argument("--config", help="YAML config file (see configs/build.yaml)")
    bld.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    bld.set_defaults(func=_build)
    rn = sub.add_parser("run", help="raw audio → curate → build → publish → train-all → eval, in one command",
                        usage="audiomill run CONFIG.yaml [--address ADDR] [key=value ...]")
    rn.add_argument("words", nargs="*", metavar="CONFIG.yaml [key=value ...]")
    rn.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    rn.set_defaults(func=_run)
    reg_help = "registry folder (any fsspec URL); default $AUDIOMILL_REGISTRY"
    pub = sub.add_parser("publish", help="make a finished output an immutable version NAME@<content hash>")
    pub.add_argument("output")
    pub.add_argument("registry")
    pub.add_argument("--name", help="version name (default: the output's name)")
    ver = sub.add_parser("versions", help="list the versions in a registry")
    ver.add_argument("registry")
    ver.add_argument("name", nargs="?")
    vfy = sub.add_parser("verify", help="check a version's files, sample counts and index (exit 1 on problems)")
    vfy.add_argument("registry")
    vfy.add_argument("ref", metavar="NAME@VERSION")
    dif = sub.add_parser("diff", help="samples added, removed and changed between two versions or outputs")
    dif.add_argument("a")
    dif.add_argument("b")
    dif.add_argument("--registry", help=reg_help)
    lin = sub.add_parser("lineage", help="trace a version (and a sample) back to raw files and configs")
    lin.add_argument("ref", metavar="NAME@VERSION")
    lin.add_argument("key", nargs="?")
    lin.add_argument("--registry", help=reg_help)
    exp = sub.add_parser("export", help="write a version or output as ms-swift, LLaMA-Factory or HF datasets files")
    exp.add_argument("source", metavar="VERSION_OR_DIR")
    exp.add_argument("format", choices=["ms-swift", "llama-factory", "hf"])
    exp.add_argument("out")
    exp.add_argument("--registry", help=reg_help)
    gc = sub.add_parser("gc", help="delete a version no other version names as a parent")
    gc.add_argument("registry")
    gc.add_argument("ref", metavar="NAME@VERSION")
    ev = sub.add_parser("eval", help="score a checkpoint on held-out examples per task, beside chance and a 'before'")
    ev.add_argument("checkpoint")
    ev.add_argument("examples", metavar="EXAMPLES_OR_VERSION")
    ev.add_argument("--before", help="the checkpoint before the stage (also the reference for DPO reward accuracy)")
    ev.add_argument("--max-examples", type=int, default=200)
    ev.add_argument("--json", help="also write the rows to this file")
    ev.add_argument("--registry", help=reg_help)
    for p in (pub, ver, vfy, dif, lin, exp, gc, ev):
        p.set_defaults(func=_versions_cmd, words=[])
    for name, help_text in [("train", "train one stage (stage=pretrain|sft|dpo) on example shards"),
                            ("train-all", "pretrain → SFT → DPO on example shards")]:
        tr = sub.add_parser(name, help=help_text,
                            usage=f"audiomill {name} EXAMPLES_DIR OUTPUT_DIR [--config FILE] [key=value ...]")
        tr.add_argument("words", nargs="*", metavar="EXAMPLES_DIR OUTPUT_DIR [key=value ...]")
        tr.add_argument("--config", help="YAML config file (see configs/train.yaml)")
        tr.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [r for r in rest if r.startswith("-")]
    if unknown or (rest and args.func is _versions_cmd):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.words = list(args.words) + rest         # key=value words may also follow --config FILE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
