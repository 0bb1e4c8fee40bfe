"""Runs the hostile-input table (cases.py): each case in its own folder, its outcome checked, and nothing
outside the output touched."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.hostile import inputs as mk
from tests.hostile.cases import CLI, CURATE, Case

pytestmark = pytest.mark.integration


def snapshot(root: Path) -> dict:
    """Every entry under ``root`` with its type and content (links as links, pipes never opened)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[p] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[p] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(open(p, "rb").read()).hexdigest())
            else:
                out[p] = (stat.S_IFMT(st.st_mode),)
    return out


def changed_outside(before: dict, after: dict, out: Path) -> list[bytes]:
    """The entries of two snapshots that differ, other than ``out`` and what lies in it."""
    mine = os.fsencode(out)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    return sorted(k for k in changed if k != mine and not k.startswith(mine + b"/"))


def _args(case: Case, case_dir: Path) -> list[str]:
    return [a.replace("{case}", str(case_dir)) for a in case.args]


def _reason_names(out: Path) -> dict[str, str]:
    rows = pq.read_table(out / "rejects.parquet").to_pylist()
    return {r["uri"].rsplit("/", 1)[-1]: r["reason"] for r in rows}


@pytest.mark.parametrize("case", CURATE, ids=[c.name for c in CURATE])
def test_curate_accounts_for_every_hostile_input(ray_cluster, tmp_path, case):
    from pipelines.config import load_config
    from pipelines.curate import CurateConfig, run

    case_dir = tmp_path / "case"
    target = case.make(case_dir)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    cfg = load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", *_args(case, case_dir)],
                      {"inputs": [str(target)], "output": str(out)})
    t = time.monotonic()
    summary = run(cfg)
    assert time.monotonic() - t < 120
    reasons = _reason_names(out)
    for name, expected in case.rejects.items():
        allowed = expected if isinstance(expected, (set, frozenset)) else {expected}
        assert reasons.get(name) in allowed, (name, reasons)
    accepted = {r["uri"].rsplit("/", 1)[-1] for r in pq.read_table(out / "index.parquet").to_pylist()}
    assert set(case.accepted) <= accepted, (accepted, reasons)
    assert summary["inputs_seen"] == summary["accepted"] + summary["rejected"]
    if case.check:
        case.check(summary, out)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(os.fsencode(out))} == before


@pytest.mark.parametrize("case", CLI, ids=[c.name for c in CLI])
def test_cli_refuses_with_one_clear_line_and_its_exit_code(ray_cluster, tmp_path, case):
    import ray

    case_dir = tmp_path / "case"
    target = case.make(case_dir)
    out = case.output(tmp_path) if case.output else tmp_path / "out"
    before = snapshot(tmp_path)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", str(target), str(out),
                          "ray.progress=false", "labelers=[none]", *_args(case, case_dir)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == case.exit_code, run.stderr[-2000:]
    assert run.stderr.startswith("audiomill curate: ") and case.message in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and len(run.stderr) < 4000
    after = snapshot(tmp_path)
    outside = changed_outside(before, after, out)
    assert not outside, outside
    assert not [k for k in after if k.endswith(b".tmp") or b".tmp-" in k]
    if case.exit_code == 2:
        assert not any(k.startswith(os.fsencode(out) + b"/segments") for k in set(after) - set(before))


def test_two_runs_into_one_output_the_second_is_refused(ray_cluster, tmp_path):
    import signal

    import ray

    corpus = mk.with_good(tmp_path / "case")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [sys.executable, "-m", "pipelines.cli", "curate", str(corpus), str(tmp_path / "out"), "ray.progress=false", "labelers=[none]"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "out" / ".audiomill-lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)          # the first run holds the lock, paused, for as long as we need
    try:
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert second.returncode == 2 and "is being written by pid" in second.stderr, second.stderr
    assert (tmp_path / "out" / "manifest.json").exists() and not lock.exists()
    assert not (tmp_path / "out" / "_work").exists()


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or not mk.mount_tmpfs(tmp_path / "disk", "3m"):
        pytest.skip("needs root to mount a small tmpfs")
    yield tmp_path / "disk"
    mk.unmount(tmp_path / "disk")


def test_a_full_disk_is_one_line_exit_4_and_no_temporary_files(ray_cluster, tmp_path, small_disk):
    import ray

    from tests.factories import chord_music, write

    corpus = tmp_path / "case"
    for i in range(6):
        write(corpus / f"m{i}.wav", chord_music(40.0, seed=i))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", str(corpus), str(small_disk / "out"),
                          "ray.progress=false", "labelers=[none]", "dedup.near=false"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 4, run.stderr[-3000:]
    assert "no space left on the device" in run.stderr and "Traceback" not in run.stderr
    leftovers = [p for p in (small_disk / "out").rglob("*") if ".tmp-" in p.name]
    assert not leftovers
    # Space freed, the same command finishes the job.
    mk.unmount(small_disk)
    mk.mount_tmpfs(small_disk, "64m")
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", str(corpus), str(small_disk / "out"),
                          "ray.progress=false", "labelers=[none]", "dedup.near=false"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_read_only_output_is_one_line(ray_cluster, tmp_path):
    if os.geteuid() != 0 or not mk.mount_tmpfs(tmp_path / "ro", "1m", readonly=True):
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        corpus = mk.with_good(tmp_path / "case")
        run = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", str(corpus), str(tmp_path / "ro" / "out"), "labelers=[none]"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "Read-only file system" in run.stderr and "Traceback" not in run.stderr
    finally:
        mk.unmount(tmp_path / "ro")


def test_every_problem_of_every_source_is_reported(tmp_path):
    (tmp_path / "c.yaml").write_text(json.dumps({"sources": [
        {"path": str(tmp_path / "nope0"), "kind": "noise"}, {"path": str(tmp_path / "nope1"), "format": "mp4"}]}))
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", str(tmp_path / "o"),
                          "--config", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    for needle in ["nope0' does not exist", "kind 'noise'", "nope1' does not exist", "format 'mp4'"]:
        assert needle in run.stderr, run.stderr


def test_a_failed_listing_leaves_nothing_that_blocks_a_rerun(ray_cluster, tmp_path):
    from pipelines.config import ConfigError, load_config
    from pipelines.curate import CurateConfig, run

    corpus = mk.manifest("m.jsonl", mk.jsonl({"file": "good.wav"}))(tmp_path / "case")
    with pytest.raises(ConfigError):
        run(load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]"], {"inputs": [str(corpus)], "output": str(tmp_path / "o")}))
    assert not (tmp_path / "o" / "_work").exists()
    cfg = load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", "vad.threshold=0.6", "sources=[]"],
                      {"inputs": [f"jsonl:{corpus}"], "output": str(tmp_path / "o")})
    corpus.write_text(mk.jsonl({"audio": "good.wav"}))
    assert run(cfg)["accepted"] == 1
