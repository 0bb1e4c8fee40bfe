"""`audiomill run`: one command from a folder of raw audio to versions, a DPO-trained checkpoint and a table
of held-out results; a rerun skips every phase and gives the same versions; a kill in any phase followed by
a rerun gives the same versions; bad settings in any section are listed together before any work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.config import ConfigError, load_config
from pipelines.run import RunConfig, run
from tests.factories import chord_music, silence, tts, write

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WORDS = {"en": ["house", "water", "garden", "window"], "de": ["Haus", "Wasser", "Garten", "Fenster"]}


def _raw(d: Path) -> Path:
    for lang, words in WORDS.items():
        for i, w in enumerate(words):
            voice = lang if i % 2 else f"{lang}+f2"
            write(d / f"{lang}-{w}.wav", np.concatenate([silence(0.3), tts(w, voice), silence(0.3)]))
            (d / f"{lang}-{w}.json").write_text(json.dumps({"text": w, "language": lang}))
    write(d / "music.wav", chord_music(5.0, seed=1))
    return d


SETTINGS = ["curate.labelers=[events]", "build.split.eval_fraction=0.3", "build.sft.voices=[espeak:en-us@160]",
            "build.sft.mixed_scene=0", "train.launcher=local", "train.stage_steps={pretrain: 3, sft: 3, dpo: 2}",
            "train.checkpoint_every=1", "ray.progress=false"]


def _cfg(raw, root, *over):
    return load_config(RunConfig, None, [*SETTINGS, *over], {"root": str(root), "inputs": [str(raw)], "name": "tiny"})


@pytest.fixture(scope="module")
def first_run(ray_cluster, tmp_path_factory):
    """One uninterrupted run from raw audio, its summary and what it printed."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("run")
    raw = _raw(tmp / "raw")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = run(_cfg(raw, tmp / "run"))
    return raw, tmp / "run", summary, printed.getvalue()


def test_one_command_from_raw_audio_to_an_evaluated_checkpoint_and_a_rerun_skips_it_all(first_run, capsys):
    raw, root, first, out = first_run
    assert (root / "train" / "dpo" / "final" / "config.json").exists()
    # Each stage hands on its export with the best held-out score (DPO's starting model is its first candidate).
    assert first["checkpoint"].endswith("dpo/best") and first["compared_with"].endswith("sft/best")
    assert first["versions"]["segments"].startswith("tiny@") and first["versions"]["examples"].startswith("tiny-examples@")
    from pipelines.registry import Registry

    reg = Registry(str(root / "registry"))
    assert reg.get(first["versions"]["examples"]).parents == (first["versions"]["segments"],)
    tasks = {(r["stage"], r["task"]) for r in first["results"]}
    assert ("pretrain", "lid") in tasks and ("dpo", "pairs") in tasks
    # Each stage's checkpoint beside the one before it; DPO's also on the SFT held-out set.
    assert all(r["before"] is None for r in first["results"] if r["stage"] == "pretrain")
    sft = {r["task"] for r in first["results"] if r["stage"] == "sft"}
    assert sft and sft <= {r["task"] for r in first["results"] if r["stage"] == "dpo"}
    assert all(r["before"] is not None for r in first["results"] if r["stage"] in ("sft", "dpo") and r["task"] != "pairs")
    assert "held-out results" in out and "Foundation: spoken language identification" in out
    assert json.loads((root / "eval.json").read_text())["versions"] == first["versions"]
    stamps = {p: p.stat().st_mtime_ns for p in (root / "train").glob("*/done.json")}
    again = run(_cfg(raw, root))
    assert again["versions"] == first["versions"]
    assert {p: p.stat().st_mtime_ns for p in (root / "train").glob("*/done.json")} == stamps     # not retrained
    assert "already trained" in capsys.readouterr().out
    # More DPO steps: only DPO trains again.
    more = run(_cfg(raw, root, "train.stage_steps={dpo: 3}"))     # merges into the steps set before
    after = {p.parent.name: p.stat().st_mtime_ns for p in (root / "train").glob("*/done.json")}
    assert {s for s, t in after.items() if t != stamps[root / "train" / s / "done.json"]} == {"dpo"}
    assert more["versions"] == first["versions"]
    assert json.loads((root / "train" / "dpo" / "done.json").read_text())["eval"]["examples"] > 0


def test_a_second_run_on_one_root_is_refused_while_the_first_holds_it(first_run, tmp_path):
    """The data phases lock their own outputs; without a lock on ROOT, a second run would skip them (done)
    and train beside the first."""
    import ray
    import yaml

    raw, root, _, _ = first_run
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"root": str(root), "inputs": [str(raw)], "name": "tiny"}))
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(config), *SETTINGS]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = root / ".audiomill-lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)          # it holds the lock, paused, for as long as the second needs
    try:
        second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and "is being written by pid" in second.stderr, second.stderr[-2000:]
    assert not lock.exists()


def test_a_rerun_after_the_registry_moved_gives_the_same_versions(first_run, tmp_path, capsys):
    import shutil

    raw, root, first, _ = first_run
    moved = tmp_path / "registry"
    shutil.move(root / "registry", moved)
    assert run(_cfg(raw, root))["versions"] == first["versions"]           # published again, same content
    assert run(_cfg(raw, root, f"registry={moved}"))["versions"] == first["versions"]
    assert "already published" in capsys.readouterr().out


@pytest.fixture
def ctrl_c_reaches_children():
    """A suite started in the background of a shell (``make test &``) runs with SIGINT ignored, and a child
    inherits an ignored signal, so the run under test would never see its Ctrl-C. A handled signal is reset
    to the default in the child: handle it here for the test's length."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_a_ctrl_c_or_a_kill_in_any_phase_then_a_rerun_gives_the_same_versions(first_run, tmp_path, ctrl_c_reaches_children):
    import ray
    import yaml

    raw, root, first, _ = first_run
    # The same command in the same place: the examples' config names the segments folder under ROOT, so
    # the uninterrupted run's outputs move aside and the killed runs write where it wrote.
    root.rename(root.with_name("uninterrupted"))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"root": str(root), "inputs": [str(raw)], "name": "tiny"}))
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(config), *SETTINGS]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    # (kill once this holds, what must not exist yet: the phase's last write)
    kill_when = {
        # (the work folder lives through the whole curate phase; its unit files only from the first unit on)
        "curate": (lambda: (root / "segments" / "_work").exists(), root / "segments" / "manifest.json"),
        "build": (lambda: (root / "examples").exists(), root / "examples" / "manifest.json"),
        "train": (lambda: any((root / "train" / "sft" / "checkpoints").glob("step-*")), root / "train" / "dpo" / "final"),
    }
    # In each phase a Ctrl-C (exit 130, one line), then a kill, then the next phase.
    for phase, (ready, unfinished) in kill_when.items():
        for sig in (signal.SIGINT, signal.SIGKILL):
            log = tmp_path / f"{phase}-{sig.name}.out"
            with open(log, "w") as out:
                proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True)
            start = time.monotonic()
            while time.monotonic() < start + 300 and not ready() and proc.poll() is None:
                time.sleep(0.02)
            # (what the failure message needs: when the signal went, whether the phase had been seen, and whether
            # the run had already ended)
            sent = (round(time.monotonic() - start, 2), ready(), proc.poll())
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=180)
            if sig == signal.SIGINT:
                assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, \
                    (phase, sent, err[-2000:], log.read_text()[-2000:])
            assert not unfinished.exists(), f"stopped too late in {phase}"
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((root / "eval.json").read_text())
    assert summary["versions"] == first["versions"]
    assert (root / "train" / "dpo" / "final" / "config.json").exists()


def test_bad_settings_in_any_section_are_listed_together(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, None, ["curate.vad.threshold=7", "build.tasks=[poetry]", "train.preset=huge",
                                      "train.stage_steps={sft: -1}", "curate.output=x"],
                    {"root": str(tmp_path / "r"), "inputs": [str(tmp_path)]})
    text = str(e.value)
    for part in ["curate: vad", "poetry", "preset", "stage_steps.sft", "curate.output: set by the run"]:
        assert part in text, part
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(ROOT / "configs" / "run.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "inputs or sources" in out.stderr
