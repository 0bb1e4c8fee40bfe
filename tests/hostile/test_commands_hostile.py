"""The hostile sweep of the commands after curate: build, publish / versions / verify / diff, train-all, eval
and run. Each row makes a bad input in its own folder, runs the command, and checks the exit code (the
README's table), a one-line message without a traceback, and that nothing outside the command's output
changed."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.factories import silence, tiny_checkpoint, tone, tts, write
from tests.hostile.test_hostile import changed_outside, snapshot

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def segments(ray_cluster, tmp_path_factory) -> Path:
    """A finished segments output of three short inputs (several shards), published nowhere."""
    from pipelines.config import load_config
    from pipelines.curate import CurateConfig, run

    raw = tmp_path_factory.mktemp("raw")
    for i in range(2):
        write(raw / f"s{i}.wav", np.concatenate([tts(f"Sweep sentence number {i}.", "en-us"), silence(0.3)]))
    write(raw / "tone.wav", tone(2.0))
    out = tmp_path_factory.mktemp("seg") / "segments"
    run(load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", "name=sweep", "shards.max_samples=1"],
                    {"inputs": [str(raw)], "output": str(out)}))
    return out


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    prepare: Callable[[Path, Path], list[str]]     # (segments, case folder) → the command's arguments
    exit_code: int
    message: str
    every: tuple[str, ...] = ()                    # more that the message must hold (every problem at once)


def _copy(segments: Path, case: Path) -> Path:
    shutil.copytree(segments, case / "seg")
    return case / "seg"


def _shard(seg: Path) -> Path:
    return sorted(seg.glob("segments-*.tar"))[0]


def _build_on(damage: Callable[[Path], None]) -> Callable[[Path, Path], list[str]]:
    def prepare(segments: Path, case: Path) -> list[str]:
        seg = _copy(segments, case)
        damage(seg)
        return ["build", str(seg), str(case / "out"), "ray.progress=false"]
    return prepare


def _truncate(seg: Path) -> None:
    p = _shard(seg)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _index_names_missing_samples(seg: Path) -> None:
    import pyarrow.parquet as pq

    t = pq.read_table(seg / "index.parquet")
    rows = t.to_pylist()
    rows[0]["offset"] += 10 ** 9
    pq.write_table(type(t).from_pylist(rows, schema=t.schema), seg / "index.parquet")


def _newer_format(seg: Path) -> None:
    m = json.loads((seg / "manifest.json").read_text())
    m["schema"] = "audiomill.manifest/9"
    (seg / "manifest.json").write_text(json.dumps(m))


def _config(text: str, *args: str) -> Callable[[Path, Path], list[str]]:
    def prepare(segments: Path, case: Path) -> list[str]:
        case.mkdir(parents=True, exist_ok=True)
        (case / "c.yaml").write_text(text.replace("{case}", str(case)).replace("{seg}", str(segments)))
        return [a.replace("{case}", str(case)).replace("{seg}", str(segments)) for a in args]
    return prepare


RUN_TYPOS = """root: {case}/out
inputs: [{case}]
bogus: 1
curate: {vad: {treshold: 0.5}}
build: {split: {eval_fractoin: 0.1}}
train: {presett: tiny}
ray: {num_cpu: 2}
"""
BUILD_TYPOS = """mix: {hourz: {}}
split: {same_voise: 0.5}
sft: {analysis_turn: 2}
dpo: {max_pair: 1}
caption: {modle: ''}
decontaminate: {ngramm: 8}
shards: {per_shards: 10}
ray: {pack_task: 1}
"""

ROWS = [
    Row("build_shard_deleted", _build_on(lambda seg: _shard(seg).unlink()), 2, "shard segments-000000.tar is missing"),
    Row("build_shard_truncated", _build_on(_truncate), 2, "where its manifest says"),
    Row("build_index_names_missing_samples", _build_on(_index_names_missing_samples), 2,
        "index.parquet names 1 sample(s) outside their shards"),
    Row("build_manifest_from_a_newer_format", _build_on(_newer_format), 2, "manifest format 9 is newer"),
    Row("build_unfinished_curate_output", _build_on(lambda seg: (seg / "manifest.json").unlink()), 2,
        "not a finished"),
    Row("run_unknown_key_in_every_section", _config(RUN_TYPOS, "run", "{case}/c.yaml"), 2,
        "did you mean 'threshold'", ("bogus: unknown key", "did you mean 'eval_fraction'", "did you mean 'preset'",
                                     "did you mean 'num_cpus'")),
    Row("build_unknown_key_in_every_section", _config(BUILD_TYPOS, "build", "{seg}", "{case}/out", "--config",
                                                      "{case}/c.yaml"), 2, "did you mean 'same_voice'",
        ("'hours'", "'analysis_turns'", "'max_pairs'", "'model'", "'ngram'", "'per_shard'", "'pack_tasks'")),
    Row("train_unknown_key", _config("presett: tiny\nrpo_alpah: 1\n", "train-all", "{case}", "{case}/out",
                                     "--config", "{case}/c.yaml"), 2, "did you mean 'preset'", ("'rpo_alpha'",)),
    Row("run_config_names_a_missing_source", _config("root: {case}/out\ninputs: [{case}/nope]\n", "run", "{case}/c.yaml"),
        2, "does not exist"),
    Row("eval_examples_version_that_does_not_exist",
        lambda seg, case: ["eval", str(_tiny_checkpoint(case)), "nosuch@7", "--registry", str(case / "reg")], 2,
        "nosuch"),
    Row("publish_to_an_uninstalled_scheme", lambda seg, case: ["publish", str(seg), "gs://bucket/reg"], 2,
        "install gcsfs"),
]


def _tiny_checkpoint(case: Path) -> Path:
    tiny_checkpoint(case / "ckpt", ["a small text to learn from"] * 4, vocab_size=300)
    return case / "ckpt"


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_each_command_refuses_bad_input_in_one_line_and_touches_nothing_else(segments, tmp_path, row):
    import ray

    case = tmp_path / "case"
    args = row.prepare(segments, case)
    before = snapshot(tmp_path)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    p = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert p.returncode == row.exit_code, (p.returncode, p.stderr[-3000:])
    assert row.message in p.stderr and "Traceback" not in p.stderr and len(p.stderr) < 4000, p.stderr[-3000:]
    for needle in row.every:
        assert needle in p.stderr, (needle, p.stderr)
    assert not changed_outside(before, snapshot(tmp_path), case / "out")
