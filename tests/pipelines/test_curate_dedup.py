"""Labels survive every duplicate situation, end to end: sentence clips with transcripts beside an exact copy
and a −6 dB copy without them, and a long recording that contains the same sentences."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.config import load_config
from pipelines.curate import CurateConfig, run
from tests.factories import assert_same_tree, silence, tts, write

pytestmark = pytest.mark.integration

SENTENCES = [("The harbour lights came on one by one.", "en-us"),
             ("A small boat drifted past the old pier.", "en-us+f2"),
             ("Nobody noticed the rain until it stopped.", "en+m3"),
             ("The baker counted every loaf twice.", "en-us+f4"),
             ("Evening trains were quieter than usual.", "en+m7")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("held_out")
    clips = []
    for i, (text, voice) in enumerate(SENTENCES):
        x = np.concatenate([silence(0.3), tts(text, voice), silence(0.3)])
        clips.append(x)
        write(d / "tts" / f"s{i}.wav", x)
        (d / "tts" / f"s{i}.txt").write_text(text.lower().rstrip(".") + "\n")
    (d / "bad").mkdir()
    shutil.copy(d / "tts" / "s0.wav", d / "bad" / "copy_of_s0.wav")           # exact, no sidecar
    write(d / "bad" / "quiet_s1.wav", clips[1] * 0.5)                           # −6 dB, no transcript …
    (d / "bad" / "quiet_s1.json").write_text(json.dumps({"speaker": "spk-7"}))  # … but a speaker
    gap = silence(1.5)
    write(d / "long" / "recording.wav", np.concatenate([gap] + [p for c in clips for p in (c, gap)]))
    return d


def _run(corpus, out, *overrides):
    cfg = load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", *overrides], {"inputs": [str(corpus)], "output": str(out)})
    summary = run(cfg)
    index = pq.read_table(out / "index.parquet").to_pylist()
    rejects = {r["uri"].split(str(corpus) + "/")[1]: r for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    records = {}
    import webdataset as wds

    for sample in wds.WebDataset([str(p) for p in sorted(out.glob("*.tar"))], shardshuffle=False):
        rec = json.loads(sample["json"])
        records[rec["id"]] = rec
    return summary, index, rejects, records


def _name(corpus, uri):
    return uri.split(str(corpus) + "/")[1]


def test_copies_without_labels_lose_to_the_clips_with_them_and_every_transcript_stays(ray_cluster, corpus, tmp_path):
    summary, index, rejects, records = _run(corpus, tmp_path / "keep")
    assert {k: (r["reason"], _name(corpus, r["duplicate_of"])) for k, r in rejects.items()} == {
        "bad/copy_of_s0.wav": ("duplicate", "tts/s0.wav"), "bad/quiet_s1.wav": ("duplicate", "tts/s1.wav")}
    by_uri = {}
    for row in index:
        by_uri.setdefault(_name(corpus, row["uri"]), []).append(row)
    assert set(by_uri) == {f"tts/s{i}.wav" for i in range(5)} | {"long/recording.wav"}
    for i, (text, _) in enumerate(SENTENCES):
        [row] = by_uri[f"tts/s{i}.wav"]
        assert row["transcript"] == text.lower().rstrip(".")
        assert [_name(corpus, u) for u in row["contained_in"]] == ["long/recording.wav"]
        where = records[row["key"]]["extra"]["contained_in"][0]
        assert where["end_s"] - where["start_s"] == pytest.approx(len(tts(text, SENTENCES[i][1])) / 16000 + 0.6, abs=0.05)
    assert all(r["transcript"] is None for r in by_uri["long/recording.wav"])
    # The dropped copies are listed on the kept clip; the quiet copy's speaker is merged onto it.
    s0 = records[by_uri["tts/s0.wav"][0]["key"]]
    assert [_name(corpus, d["uri"]) for d in s0["extra"]["duplicates"]] == ["bad/copy_of_s0.wav"]
    s1 = records[by_uri["tts/s1.wav"][0]["key"]]
    assert s1["labels"]["speakers"]["turns"][0]["speaker"] == "spk-7"
    assert _name(corpus, s1["labels"]["speakers"]["origin"]) == "bad/quiet_s1.wav"
    assert summary["labels"]["merged"] == 1 and summary["labels"]["not_placed"] == 0


def test_containment_drop_moves_each_transcript_onto_the_recordings_segment(ray_cluster, corpus, tmp_path):
    summary, index, rejects, records = _run(corpus, tmp_path / "drop", "dedup.containment=drop")
    contained = {k for k, r in rejects.items() if r["reason"] == "contained"}
    assert contained == {f"tts/s{i}.wav" for i in range(5)}
    assert all(_name(corpus, rejects[k]["duplicate_of"]) == "long/recording.wav" for k in contained)
    assert {_name(corpus, r["uri"]) for r in index} == {"long/recording.wav"}
    rows = sorted(index, key=lambda r: r["start_s"])
    transcripts = [r["transcript"] for r in rows if r["transcript"]]
    assert transcripts == [t.lower().rstrip(".") for t, _ in SENTENCES]
    for row in rows:
        if row["transcript"]:
            t = records[row["key"]]["labels"]["transcript"]
            assert _name(corpus, t["origin"]).startswith("tts/s") and t["by"] == "manifest"
    first = records[rows[0]["key"]]
    assert {_name(corpus, d["uri"]) for d in first["extra"]["duplicates"]} == {"tts/s0.wav", "bad/copy_of_s0.wav"}
    assert summary["labels"]["moved"] >= 5 and summary["labels"]["not_placed"] == 0
    assert summary["rejected_by_reason"] == {"contained": 5, "duplicate": 2}


def test_dedup_shuffled_by_hash_bucket_gives_the_same_output_as_one_task(ray_cluster, corpus, tmp_path, capsys):
    """The fingerprints in many hash buckets, taken in turn by one task or shuffled across the cluster (with
    each candidate verified in its own task), decide what one task with one bucket decides: the outputs, duplicates, containments and moved labels included, are
    byte-identical."""
    one, in_turn, shuffled = tmp_path / "one", tmp_path / "in_turn", tmp_path / "shuffled"
    _run(corpus, one)
    assert "hashes in one task, 1 hash bucket in turn" in capsys.readouterr().out
    _run(corpus, in_turn, "ray.dedup_bucket_hashes=200")          # one task, its rows made bucket by bucket
    assert int(capsys.readouterr().out.split("in one task, ")[1].split()[0]) >= 4
    _run(corpus, shuffled, "ray.dedup_one_task_hashes=0", "ray.dedup_bucket_hashes=200", "ray.dedup_verify_batch=1")
    said = capsys.readouterr().out
    buckets = int(said.split("shuffled in ")[1].split()[0])
    assert buckets >= 4
    assert_same_tree(one, in_turn)
    assert_same_tree(one, shuffled)
    rejects = pq.read_table(shuffled / "rejects.parquet").to_pylist()
    assert sorted(r["reason"] for r in rejects) == ["duplicate", "duplicate"]
