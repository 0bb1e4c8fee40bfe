"""The hostile-input table for training: (make the example set, the command, the expected outcome)."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

FAST = ("launcher=local", "max_tokens=600", "eval_max_examples=4", "warmup_steps=1")


@dataclasses.dataclass(frozen=True)
class TrainCase:
    name: str
    make: Callable[[Path, Path], Path]          # (a good example set, a new folder) → EXAMPLES_DIR
    args: tuple[str, ...]                       # the command after `audiomill`, with {ex} and {out}
    exit_code: int
    message: str = ""                           # in stderr (a refusal) or stdout (a note on the way)
    check: Callable[[Path], None] | None = None


def copy(stages=("pretrain", "sft", "dpo"), eval_sets=True):
    def make(src: Path, dst: Path) -> Path:
        for stage in stages:
            shutil.copytree(src / stage, dst / stage, ignore=None if eval_sets else shutil.ignore_patterns("eval"))
        return dst
    return make


def rewrite(src: Path, dst: Path, change) -> None:
    """Copy a shard, passing each member's (name, bytes) through ``change`` (None drops the member)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            out = change(m.name, tin.extractfile(m).read())
            if out is not None:
                info = tarfile.TarInfo(m.name)
                info.size = len(out)
                tout.addfile(info, io.BytesIO(out))


def _bad_shards(src: Path, dst: Path) -> Path:
    ex = copy(("pretrain",))(src, dst)
    shard = sorted((ex / "pretrain").glob("*.tar"))[0]
    (ex / "pretrain" / "zz-truncated.tar").write_bytes(shard.read_bytes()[:9000])
    rewrite(shard, ex / "pretrain" / "zz-noaudio.tar", lambda n, d: None if n.endswith(".flac") else d)
    rewrite(shard, ex / "pretrain" / "zz-notflac.tar", lambda n, d: b"not flac" * 10 if n.endswith(".flac") else d)
    rewrite(shard, ex / "pretrain" / "zz-badjson.tar", lambda n, d: b"{oops" if n.endswith(".json") else d)
    return ex


def _bad_held_out(src: Path, dst: Path) -> Path:
    ex = copy(("pretrain",))(src, dst)
    (ex / "pretrain" / "eval" / "aa-junk.tar").write_bytes(b"junk" * 500)       # read first
    return ex


def _all_unreadable(src: Path, dst: Path) -> Path:
    ex = copy(("pretrain",))(src, dst)
    for shard in (ex / "pretrain").glob("*.tar"):
        bad = shard.with_suffix(".bad")
        rewrite(shard, bad, lambda n, d: b"junk" if n.endswith(".flac") else d)
        bad.replace(shard)
    return ex


def _empty(src: Path, dst: Path) -> Path:
    dst.mkdir()
    return dst


def _wrong_layout(src: Path, dst: Path) -> Path:
    dst.mkdir()
    (dst / "segments-000000.tar").write_bytes(b"")
    return dst


def _sft_folder_of_pretrain_shards(src: Path, dst: Path) -> Path:
    ex = copy()(src, dst)
    for shard in (ex / "sft").glob("*.tar"):
        shard.unlink()
    shutil.copy(sorted((ex / "pretrain").glob("*.tar"))[0], ex / "sft" / "examples-000000.tar")
    return ex


def _eval_json(stage: str, **expect):
    def check(out: Path) -> None:
        result = json.loads((out / stage / "eval.json").read_text())
        for key, value in expect.items():
            got = result
            for part in key.split("."):
                got = got[part]
            assert (value(got) if callable(value) else got == value), (key, got)
    return check


def _only_pretrain(out: Path) -> None:
    assert (out / "pretrain" / "final" / "model.safetensors").exists() and not (out / "sft").exists()


TRAIN = [
    TrainCase("only_pretrain_shards", copy(("pretrain",)), ("train-all", "{ex}", "{out}", "max_steps=2"), 0,
              "no sft shards", _only_pretrain),
    TrainCase("stage_without_shards", copy(("pretrain",)), ("train", "{ex}", "{out}", "stage=sft", "max_steps=2"), 2,
              "no example shards for sft: expected sft/*.tar"),
    TrainCase("empty_examples_dir", _empty, ("train-all", "{ex}", "{out}"), 2, "pretrain/*.tar, sft/*.tar, dpo/*.tar"),
    TrainCase("missing_examples_dir", lambda src, dst: dst / "nope", ("train-all", "{ex}", "{out}"), 2, "does not exist"),
    TrainCase("examples_dir_of_another_layout", _wrong_layout, ("train-all", "{ex}", "{out}"), 2,
              "found ['segments-000000.tar']"),
    TrainCase("a_stage_folder_of_another_stages_shards", _sft_folder_of_pretrain_shards,
              ("train-all", "{ex}", "{out}", "max_steps=2"), 2,
              "sft/examples-000000.tar holds pretrain examples); each stage's shards go in its own folder"),
    TrainCase("bad_training_shards", _bad_shards, ("train", "{ex}", "{out}", "stage=pretrain", "max_steps=3"), 0,
              check=_eval_json("pretrain", steps=3, **{"eval.examples": 4})),
    TrainCase("bad_held_out_shard", _bad_held_out, ("train", "{ex}", "{out}", "stage=pretrain", "max_steps=2"), 0,
              check=_eval_json("pretrain", **{"eval.held_out": lambda note: "skipped" in note})),
    TrainCase("all_samples_unreadable", _all_unreadable,
              ("train", "{ex}", "{out}", "stage=pretrain", "max_steps=3", "model_dir={base}"), 3, "could not be read"),
    TrainCase("task_weight_for_an_absent_task", copy(), ("train", "{ex}", "{out}", "stage=sft", "task_weights={{asr: 1.0}}"),
              2, "task_weights names tasks the sft shards do not hold: ['asr']"),
    TrainCase("all_task_weights_zero", copy(), ("train", "{ex}", "{out}", "stage=sft", "task_weights={{lid: 0.0}}"), 2,
              "weight 0"),
    TrainCase("max_steps_0_evaluates_only", copy(("pretrain",)), ("train", "{ex}", "{out}", "stage=pretrain", "max_steps=0"),
              0, check=_eval_json("pretrain", steps=0, **{"eval.examples": 4})),
    TrainCase("negative_max_steps", copy(("pretrain",)), ("train", "{ex}", "{out}", "stage=pretrain", "max_steps=-1"), 2,
              "max_steps and lr: must be ≥ 0"),
    TrainCase("no_held_out_set", copy(("pretrain",), eval_sets=False),
              ("train", "{ex}", "{out}", "stage=pretrain", "max_steps=2"), 0, "held out for evaluation by content",
              _eval_json("pretrain", **{"eval.examples": lambda n: n > 0})),
]
