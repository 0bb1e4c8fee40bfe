"""The curate job end to end on an embedded Ray: accounting of bad input, segmenting, dedup, shard round
trips through three readers, byte-identical reruns and resume after a kill."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipelines.config import load_config
from pipelines.curate import CurateConfig, ErrorBudgetExceeded, run
from tests.factories import assert_same_tree, chord_music, ffmpeg, silence, tone, tts, write

pytestmark = pytest.mark.integration


def _cfg(inputs, output, *overrides, **extra):
    return load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", *overrides],
                       {"inputs": [str(i) for i in inputs], "output": str(output), **extra})


def _speech_file(seconds_of_pauses=0.6):
    lines = ["Every morning the baker opens the shop before sunrise.",
             "Fresh bread fills the street with a warm smell.",
             "Children stop on their way to school to buy rolls."]
    parts = []
    for i, text in enumerate(lines):
        parts += [tts(text, ["en-us", "en-us+f2", "en+m3"][i]), silence(seconds_of_pauses)]
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """Fifteen-plus kinds of bad or odd input beside a few good files; value = expected reason or None."""
    d = tmp_path_factory.mktemp("bad")
    good = _speech_file()
    expect = {}

    def put(name, reason):
        expect[name] = reason

    write(d / "good.wav", good); put("good.wav", None)
    (d / "zero.wav").write_bytes(b""); put("zero.wav", "undecodable")
    other = tts("A completely different recording about trains, timetables and crowded platforms.", "en+m3")
    flac = write(d / "long.flac", np.concatenate([other, silence(1.0), other[::-1]]))
    put("long.flac", None)
    data = flac.read_bytes()
    (d / "truncated.flac").write_bytes(data[: len(data) // 2]); put("truncated.flac", {"corrupt", "truncated"})
    (d / "random.wav").write_bytes(np.random.default_rng(1).bytes(20000)); put("random.wav", "undecodable")
    (d / "text.mp3").write_text("definitely not an mp3\n" * 100); put("text.mp3", "undecodable")
    nan = tone(2.0); nan[500:600] = np.nan
    write(d / "nan.wav", nan, subtype="FLOAT"); put("nan.wav", "non_finite")
    write(d / "eight_channels.wav", np.tile(tts("Eight channels of the same voice.")[:, None], (1, 8)))
    put("eight_channels.wav", None)
    hi = tts("Sampled at one hundred ninety two kilohertz.")
    write(d / "hirate.wav", np.interp(np.arange(0, len(hi), 1 / 12), np.arange(len(hi)), hi), sr=192000)
    put("hirate.wav", None)
    write(d / "click.wav", tone(0.005)); put("click.wav", "too_short")
    write(d / "silence.wav", silence(60.0)); put("silence.wav", "silent")
    write(d / "ünïcödé name ñ.wav", tts("Unicode names are fine.", "en-us+f3")); put("ünïcödé name ñ.wav", None)
    os.symlink(d / "loop_b.wav", d / "loop_a.wav"); os.symlink(d / "loop_a.wav", d / "loop_b.wav")
    put("loop_a.wav", "unreadable"); put("loop_b.wav", "unreadable")
    os.symlink(d / "does-not-exist.wav", d / "dangling.wav"); put("dangling.wav", "unreadable")
    (d / "folder.wav").mkdir(); put("folder.wav", "unreadable")
    (d / "the copy of good.wav").write_bytes((d / "good.wav").read_bytes()); put("the copy of good.wav", "duplicate")
    ffmpeg(d / "good.wav", d / "good_reencoded.mp3", "-b:a", "64k"); put("good_reencoded.mp3", "duplicate")
    ffmpeg(d / "good.wav", d / "good_reencoded.m4a", "-c:a", "aac", "-b:a", "96k"); put("good_reencoded.m4a", "duplicate")
    write(d / "music.wav", chord_music(40.0, seed=3)); put("music.wav", None)
    return d, expect


@pytest.fixture(scope="module")
def bad_run(ray_cluster, bad_corpus, tmp_path_factory):
    d, _ = bad_corpus
    out = tmp_path_factory.mktemp("out") / "segments"
    summary = run(_cfg([d], out, "shards.max_samples=4"))
    return out, summary


def test_every_input_is_accounted_for_with_its_reason(bad_corpus, bad_run):
    d, expect = bad_corpus
    out, summary = bad_run
    rejects = {os.path.basename(r["uri"]): r for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    index = pq.read_table(out / "index.parquet").to_pylist()
    accepted = {os.path.basename(r["uri"]) for r in index}
    assert summary["inputs_seen"] == len(expect) == summary["accepted"] + summary["rejected"]
    assert accepted | set(rejects) == set(expect) and not accepted & set(rejects)
    for name, reason in expect.items():
        if reason is None:
            assert name in accepted, (name, rejects.get(name))
        else:
            allowed = reason if isinstance(reason, set) else {reason}
            assert rejects[name]["reason"] in allowed, (name, rejects[name])
    assert rejects["loop_a.wav"]["detail"] == "symlink loop"
    for dup in ["the copy of good.wav", "good_reencoded.mp3", "good_reencoded.m4a"]:
        assert rejects[dup]["duplicate_of"].endswith("/good.wav")
    assert summary["rejected_by_reason"]["duplicate"] == 3


def test_segments_are_at_most_30s_and_carry_measurements(bad_run):
    out, _ = bad_run
    index = pq.read_table(out / "index.parquet").to_pandas()
    assert (index.duration_s <= 30.0 + 1e-6).all() and (index.duration_s > 0).all()
    assert index.key.is_unique
    assert set(index.kind) >= {"speech", "sound"}
    assert index[["peak", "clipping_ratio", "snr_db", "bandwidth_hz"]].notna().all().all()
    music = index[index.uri.str.endswith("music.wav")].sort_values("start_s")
    assert len(music) >= 2 and music.end_s.max() <= 40.0 + 1e-6    # 40 s of music cut into ≤ 30 s windows
    assert (music.start_s.values[1:] >= music.end_s.values[:-1] - 1e-6).all()


def test_manifest_lists_every_shard_with_its_hash(bad_run):
    import hashlib

    out, _ = bad_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"] == "audiomill.manifest/1" and manifest["layer"] == "segments"
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert [s["name"] for s in manifest["shards"]] == tars and len(tars) >= 2
    for s in manifest["shards"]:
        data = (out / s["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
    assert sum(s["samples"] for s in manifest["shards"]) == manifest["summary"]["segments"]
    assert not (out / "_work").exists()


def test_round_trip_with_webdataset(bad_run):
    import webdataset as wds

    out, _ = bad_run
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    index = {r["key"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        rec = json.loads(sample["json"])
        x, sr = sf.read(io.BytesIO(sample["flac"]))
        assert sr == 16000 and x.ndim == 1
        assert rec["id"] == sample["__key__"] and abs(len(x) / sr - rec["duration_s"]) < 1e-3
        assert rec["schema"] == "audiomill.segment/1" and index[rec["id"]]["duration_s"] == rec["duration_s"]
        n += 1
    assert n == len(index)


def test_round_trip_with_ray_data(ray_cluster, bad_run):
    import ray

    out, _ = bad_run
    rows = ray.data.read_webdataset(str(out), file_extensions=["tar"], decoder=None).take_all()
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert sorted(r["__key__"] for r in rows) == sorted(r["key"] for r in index)
    assert all(json.loads(r["json"])["id"] == r["__key__"] for r in rows)


def test_round_trip_with_hf_datasets(bad_run, tmp_path):
    from datasets import load_dataset

    out, _ = bad_run
    ds = load_dataset("webdataset", data_files={"train": [str(p) for p in sorted(out.glob("*.tar"))]},
                      split="train", cache_dir=str(tmp_path))
    assert len(ds) == len(pq.read_table(out / "index.parquet"))
    first = ds[0]
    assert first["json"]["id"] == first["__key__"]
    audio = first["flac"]  # decoded by datasets' Audio feature
    samples = audio.get_all_samples()
    assert samples.sample_rate == 16000
    assert abs(samples.data.shape[-1] / 16000 - first["json"]["duration_s"]) < 1e-3


def test_error_budget_stops_a_bad_job(ray_cluster, bad_corpus, tmp_path):
    d, _ = bad_corpus
    with pytest.raises(ErrorBudgetExceeded):
        run(_cfg([d], tmp_path / "o", "errors.min_inputs=5", "errors.max_reject_fraction=0.2"))


@pytest.fixture(scope="module")
def resume_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    voices = ["en-us", "en-us+f2", "en+m3", "en-us+f4"]
    for i in range(12):
        x = tts(f"Sentence number {i} is about item {i * 7} in the big catalogue of things.", voices[i % 4])
        write(d / f"utt{i:02d}.wav", np.concatenate([x, silence(0.5), x[::-1] * 0.1]))
        (d / f"utt{i:02d}.txt").write_text(f"sentence number {i}")
    write(d / "long_music.wav", chord_music(75.0, seed=5))
    return d


def test_rerun_is_byte_identical_and_resume_after_kill_matches(ray_cluster, resume_corpus, tmp_path):
    args = ["shards.max_samples=3", "audio.chunk_s=60"]
    first, second = tmp_path / "first", tmp_path / "second"
    run(_cfg([resume_corpus], first, *args))
    run(_cfg([resume_corpus], second, *args))
    assert_same_tree(first, second)

    # Kill a driver mid-way (it attaches to the test cluster), then finish the job in a new run.
    killed = tmp_path / "killed"
    markers = killed / "_work" / "units"
    _kill_after_units(resume_corpus, killed, args, 3)
    time.sleep(1.0)              # tasks of the dead driver may still finish their unit
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in markers.glob("*.arrow")}
    assert 3 <= len(before) < 13
    summary = run(_cfg([resume_corpus], killed, *args, "keep_work=true"))
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in markers.glob("*.arrow")}
    assert {k: after[k] for k in before} == before, "finished units were redone"
    assert len(after) == 13 and summary["inputs_seen"] == 13
    assert (killed / "_work").is_dir()
    assert_same_tree(first, killed, ignore={"_work"})
    # The long file was chunked; its segments stay in order and within its length.
    index = pq.read_table(first / "index.parquet").to_pandas()
    music = index[index.uri.str.endswith("long_music.wav")].sort_values("start_s")
    assert music.end_s.max() <= 75.0 and (music.duration_s <= 30.0).all() and len(music) >= 3
    transcripts = index[index.transcript.notna()]
    assert len(transcripts) == 12 and all(t.startswith("sentence number") for t in transcripts.transcript)


def _kill_after_units(corpus: Path, out: Path, args: list[str], n: int) -> None:
    """Start the CLI on the test cluster and SIGKILL its driver once ``n`` inputs have finished."""
    import ray

    markers = out / "_work" / "units"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "curate", str(corpus), str(out), *args,
                             "ray.progress=false", "labelers=[none]", "keep_work=true"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(markers.glob("*.arrow"))) < n:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "killed too late"


def test_an_input_replaced_after_a_kill_is_redone(ray_cluster, resume_corpus, tmp_path):
    import shutil

    from processors.sources import SourceSpec, list_inputs

    corpus = tmp_path / "corpus"
    shutil.copytree(resume_corpus, corpus)
    args = ["shards.max_samples=3", "audio.chunk_s=60"]
    killed = tmp_path / "killed"
    _kill_after_units(corpus, killed, args, 3)
    time.sleep(1.0)
    done = {p.stem for p in (killed / "_work" / "units").glob("*.arrow")}
    items = list_inputs(SourceSpec(path=str(corpus))).items
    victim = next(Path(it.path) for it in items if it.unit in done and it.path.endswith(".wav") and "utt" in it.path)
    write(victim, np.concatenate([tts("A different recording took this file's place after the crash.", "en+m3"),
                                  silence(0.5)]))
    run(_cfg([corpus], killed, *args))
    clean = tmp_path / "clean"
    run(_cfg([corpus], clean, *args))
    assert_same_tree(clean, killed)
    import hashlib

    index = pq.read_table(killed / "index.parquet").to_pylist()
    mine = [r for r in index if r["uri"] == str(victim)]
    assert mine and all(r["source_sha256"] == hashlib.sha256(victim.read_bytes()).hexdigest() for r in mine)


def test_finished_output_is_not_redone_and_other_config_is_refused(ray_cluster, resume_corpus, tmp_path):
    from pipelines.output import OutputConflict

    out = tmp_path / "o"
    first = run(_cfg([resume_corpus], out))
    assert run(_cfg([resume_corpus], out)) == json.loads((out / "manifest.json").read_text())["summary"]
    assert first["segments"] > 0
    with pytest.raises(OutputConflict):
        run(_cfg([resume_corpus], out, "vad.threshold=0.7"))
