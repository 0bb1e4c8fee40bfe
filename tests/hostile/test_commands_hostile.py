"""The hostile sweep of the commands after curate: build, publish / verify / diff, export, train-all, eval
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

from tests.factories import silence, tiny_checkpoint, tiny_text_lm, tone, tts, write
from tests.hostile.test_hostile import changed_outside, snapshot

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def segments(ray_cluster, tmp_path_factory) -> Path:
    """A finished segments output of three short inputs, one shard each, two with a transcript and language
    from their sidecars (so examples can be built without labelers); published nowhere."""
    from pipelines.config import load_config
    from pipelines.curate import CurateConfig, run

    raw = tmp_path_factory.mktemp("raw")
    for i, text in enumerate(["The river was calm this morning.", "Please close the window before you leave."]):
        write(raw / f"s{i}.wav", np.concatenate([silence(0.3), tts(text, "en-us"), silence(0.3)]))
        (raw / f"s{i}.json").write_text(json.dumps({"text": text, "language": "en"}))
    write(raw / "tone.wav", tone(2.0))
    out = tmp_path_factory.mktemp("seg") / "segments"
    run(load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", "name=sweep", "shards.max_samples=1"],
                    {"inputs": [str(raw)], "output": str(out)}))
    return out


def _build(segments: Path, out: Path, *overrides: str) -> Path:
    from pipelines.build import BuildConfig, run
    from pipelines.config import load_config

    run(load_config(BuildConfig, None, ["ray.progress=false", "sft.voice_chat=false", "sft.mixed_scene=0", *overrides],
                    {"inputs": [str(segments)], "output": str(out)}))
    return out


@pytest.fixture(scope="module")
def outputs(segments) -> dict[str, Path]:
    """The segments, examples built from them, and an examples output with no example at all."""
    return {"segments": segments, "examples": _build(segments, segments.parent / "examples", "split.eval_fraction=0.3"),
            "empty": _empty_examples(segments.parent / "empty")}


def _empty_examples(out: Path) -> Path:
    from processors.builders.writer import write_examples

    write_examples(str(out), {}, name="empty", config_hash="empty", per_shard=10)
    return out


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    prepare: Callable[[dict, Path], list[str]]     # (the outputs fixture, case folder) → the arguments
    exit_code: int
    message: str
    every: tuple[str, ...] = ()                    # more that the message must hold (every problem at once)


def _copy(segments: Path, case: Path) -> Path:
    shutil.copytree(segments, case / "seg")
    return case / "seg"


def _published(segments: Path, case: Path) -> tuple[Path, str, Path]:
    """(registry, version ref, its data folder) of ``segments`` published into a new registry."""
    from pipelines.registry import Registry

    reg = Registry(str(case / "reg"))
    v, _ = reg.publish(str(segments))
    return case / "reg", v.ref, Path(reg.data_url(v))


def _verify_on(damage: Callable[[Path, str, Path], None]) -> Callable[[dict, Path], list[str]]:
    def prepare(outs: dict, case: Path) -> list[str]:
        reg, ref, data = _published(outs["segments"], case)
        damage(reg, ref, data)
        return ["verify", str(reg), ref]
    return prepare


def _edit_record(reg: Path, ref: str, data: Path) -> None:
    name, version = ref.split("@")
    path = reg / name / "versions" / f"{version}.json"
    record = json.loads(path.read_text())
    next(f for f in record["files"] if f["path"] == "index.parquet")["sha256"] = "0" * 64
    path.write_text(json.dumps(record))


def _garble_record(reg: Path, ref: str, data: Path) -> None:
    name, version = ref.split("@")
    (reg / name / "versions" / f"{version}.json").write_text("{edited")


def _shard(seg: Path) -> Path:
    return sorted(seg.glob("segments-*.tar"))[0]


def _build_on(damage: Callable[[Path], None]) -> Callable[[dict, Path], list[str]]:
    def prepare(outs: dict, case: Path) -> list[str]:
        seg = _copy(outs["segments"], case)
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


def _config(text: str, *args: str) -> Callable[[dict, Path], list[str]]:
    def prepare(outs: dict, case: Path) -> list[str]:
        case.mkdir(parents=True, exist_ok=True)
        fill = lambda t: t.replace("{case}", str(case)).replace("{seg}", str(outs["segments"]))  # noqa: E731
        (case / "c.yaml").write_text(fill(text))
        return [fill(a) for a in args]
    return prepare


def _cli(*args: str) -> Callable[[dict, Path], list[str]]:
    """A command line with {seg}, {ex} and {case} filled in ({ckpt}: a tiny checkpoint made in the case)."""
    def prepare(outs: dict, case: Path) -> list[str]:
        case.mkdir(parents=True, exist_ok=True)
        if any("{ckpt}" in a for a in args):
            _tiny_checkpoint(case)
        return [a.replace("{seg}", str(outs["segments"])).replace("{ex}", str(outs["examples"]))
                .replace("{empty}", str(outs["empty"]))
                .replace("{case}", str(case)).replace("{ckpt}", str(case / "ckpt")) for a in args]
    return prepare


def _checkpoint_without(name: str) -> Callable[[dict, Path], list[str]]:
    def prepare(outs: dict, case: Path) -> list[str]:
        (_tiny_checkpoint(case) / name).unlink()
        return ["eval", str(case / "ckpt"), str(outs["examples"])]
    return prepare


def _eval_on_misplaced_shards(outs: dict, case: Path) -> list[str]:
    """An examples folder whose sft/ holds pretrain's shards (train and held-out)."""
    ex = case / "ex"
    shutil.copytree(outs["examples"], ex)
    shutil.rmtree(ex / "sft")
    shutil.copytree(ex / "pretrain", ex / "sft")
    return ["eval", str(_tiny_checkpoint(case)), str(ex)]


def _user_folder(outs: dict, case: Path) -> list[str]:
    (case / "mine").mkdir(parents=True)
    (case / "mine" / "notes.txt").write_text("a user's file")
    return ["export", str(outs["examples"]), "hf", str(case / "mine")]


def _text_only_checkpoint(outs: dict, case: Path) -> list[str]:
    tiny_text_lm(case / "qwen2", 64)
    return ["eval", str(case / "qwen2"), str(outs["examples"])]


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
    Row("eval_examples_version_that_does_not_exist", _cli("eval", "{ckpt}", "nosuch@7", "--registry", "{case}/reg"), 2,
        "nosuch@7 is not in"),
    Row("eval_checkpoint_of_another_model_type", _text_only_checkpoint, 2,
        "holds a 'qwen2' checkpoint; supported model types: qwen2_audio"),
    Row("eval_checkpoint_missing_its_weights", _checkpoint_without("model.safetensors"), 2, "is missing its weights"),
    Row("eval_on_a_stage_folder_of_another_stages_shards", _eval_on_misplaced_shards, 2,
        "holds pretrain examples"),
    Row("train_all_on_segments_not_examples", _cli("train-all", "{seg}", "{case}/out"), 2,
        "has no example shards for pretrain, sft, dpo"),
    Row("export_of_an_empty_version", _cli("export", "{empty}", "ms-swift", "{case}/out"), 2, "holds no shards"),
    Row("publish_to_an_uninstalled_scheme", _cli("publish", "{seg}", "gs://bucket/reg"), 2, "install gcsfs"),
    Row("verify_card_edited_by_hand", _verify_on(lambda reg, ref, data: (data / "README.md").write_text("edited")),
        1, "README.md: sha256"),
    Row("verify_record_edited_by_hand", _verify_on(_edit_record), 1, "its files do not hash to its version"),
    Row("verify_record_not_json", _verify_on(_garble_record), 2, "not a readable version record"),
    Row("diff_of_two_layers", _cli("diff", "{seg}", "{ex}"), 2, "holds segments", ("holds examples",)),
    Row("export_into_its_own_input", _cli("export", "{ex}", "ms-swift", "{ex}/out"), 2, "is inside the input"),
    Row("export_into_a_folder_of_user_files", _user_folder, 2, "is not empty"),
    Row("export_into_a_path_that_is_not_utf8", _cli("export", "{ex}", "ms-swift", "{case}/caf\udce9"), 2,
        "is not UTF-8"),
]


def _tiny_checkpoint(case: Path) -> Path:
    tiny_checkpoint(case / "ckpt", ["a small text to learn from"] * 4, vocab_size=300)
    return case / "ckpt"


def _sweep_run(args: list[str]) -> subprocess.CompletedProcess:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, env=env, cwd=ROOT,
                          timeout=300, errors="backslashreplace")


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_each_command_refuses_bad_input_in_one_line_and_touches_nothing_else(outputs, tmp_path, row):
    case = tmp_path / "case"
    args = row.prepare(outputs, case)
    before, outside = snapshot(tmp_path), {k: snapshot(v) for k, v in outputs.items()}
    p = _sweep_run(args)
    said = p.stdout + p.stderr
    assert p.returncode == row.exit_code, (p.returncode, said[-3000:])
    assert row.message in said and "Traceback" not in said and len(p.stderr) < 4000, said[-3000:]
    for needle in row.every:
        assert needle in said, (needle, said)
    assert not changed_outside(before, snapshot(tmp_path), case / "out")
    assert {k: snapshot(v) for k, v in outputs.items()} == outside


def test_export_handles_audio_paths_with_spaces_and_quotes(outputs, tmp_path):
    out = tmp_path / "sp ace 'q\"x"
    p = _sweep_run(["export", str(outputs["examples"]), "ms-swift", str(out)])
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert rows and all(Path(a).is_file() and Path(a).parent == out / "audio" for r in rows for a in r["audios"])


@pytest.fixture
def store(tmp_path):
    from tests.hostile import inputs as mk

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield tmp_path / "store", mk
    mk.unmount(tmp_path / "store")


@pytest.mark.parametrize("how,exit_code,message", [("ro", 4, "cannot write"), ("full", 4, "no space left")])
def test_publish_to_a_read_only_or_full_store_is_one_line_and_leaves_no_version(segments, store, how, exit_code,
                                                                                message):
    from pipelines.registry import Registry

    folder, mk = store
    if not mk.mount_tmpfs(folder, "16k" if how == "full" else "1m", readonly=how == "ro"):
        pytest.skip("mounting a tmpfs is not allowed here")
    p = _sweep_run(["publish", str(segments), str(folder / "reg")])
    assert p.returncode == exit_code and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert Registry(str(folder / "reg")).versions() == []            # no record: no version


def test_gc_while_a_publish_is_running_is_refused(outputs, tmp_path):
    """The examples being published name the segments version as their parent, and have no record yet:
    gc of the segments version waits for the publish instead of deleting what it will name."""
    import threading

    from pipelines.registry import Registry, RegistryError

    reg = Registry(str(tmp_path / "reg"))
    seg, _ = reg.publish(str(outputs["segments"]), "sweep")
    copied, release = threading.Event(), threading.Event()

    def hold(step: str) -> None:
        if step == "verify":                # copied, its record not yet written
            copied.set()
            release.wait(60)

    publishing = threading.Thread(target=reg.publish, args=(str(outputs["examples"]), "sweep-examples", hold))
    publishing.start()
    try:
        assert copied.wait(60)
        p = _sweep_run(["gc", str(tmp_path / "reg"), seg.ref])
        assert p.returncode == 2 and "a publish is running" in p.stderr and "Traceback" not in p.stderr, p.stderr
    finally:
        release.set()
        publishing.join(60)
    examples = reg.versions("sweep-examples")
    assert [v.parents for v in examples] == [(seg.ref,)] and reg.get(seg.ref)
    with pytest.raises(RegistryError, match="is the parent of"):              # and afterwards, by its record
        reg.gc(seg.ref)
