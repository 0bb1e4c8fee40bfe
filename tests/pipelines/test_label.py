"""`audiomill label`: the same audio re-labelled into a new segments version whose parent is the input;
filters drop segments with counted reasons; a rerun is a no-op and byte-identical."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.config import ConfigError, load_config
from pipelines.curate import CurateConfig
from pipelines.curate import run as curate
from pipelines.label import LabelConfig, run
from tests.factories import chord_music, silence, tts, write

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def segments(ray_cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    for i, voice in enumerate(["en-us+m3", "en-us+f2"]):
        write(d / f"talk{i}.wav", np.concatenate([tts(f"Relabel test number {i}, spoken clearly.", voice), silence(0.4)]))
    write(d / "music.wav", chord_music(10.0, seed=2))
    (d / "bad.wav").write_bytes(b"not audio")
    out = tmp_path_factory.mktemp("seg") / "segments"
    curate(load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", "name=raw-set"],
                       {"inputs": [str(d)], "output": str(out)}))
    return out


def _cfg(src, out, *overrides):
    return load_config(LabelConfig, None, ["ray.progress=false", *overrides], {"input": str(src), "output": str(out)})


def _samples(out):
    import webdataset as wds

    return {s["__key__"]: (json.loads(s["json"]), s["flac"])
            for s in wds.WebDataset([str(p) for p in sorted(out.glob("*.tar"))], shardshuffle=False)}


def test_relabelled_corpus_keeps_the_audio_adds_labels_and_names_its_parent(segments, tmp_path):
    out = tmp_path / "relabelled"
    summary = run(_cfg(segments, out, "labelers=[events,gender]"))
    before, after = _samples(segments), _samples(out)
    assert set(before) == set(after) and summary["segments"] == len(after)
    for key, (rec, flac) in after.items():
        assert flac == before[key][1]                           # not decoded and encoded again
        assert rec["labels"]["events"] and rec["labels"]["quality"] == before[key][0]["labels"]["quality"]
    genders = {rec["source"]["uri"].rsplit("/", 1)[1]: rec["labels"].get("paralinguistic", {}).get("gender")
               for rec, _ in after.values()}
    assert genders["talk0.wav"] == "male" and genders["talk1.wav"] == "female"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parent_version"] == "raw-set@1" and manifest["layer"] == "segments"
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [r["reason"] for r in rejects] == ["undecodable"]          # carried over from the parent
    again = run(_cfg(segments, out, "labelers=[events,gender]"))
    assert again == manifest["summary"]
    other = tmp_path / "other"
    run(_cfg(segments, other, "labelers=[events,gender]"))
    for name in ["index.parquet", "rejects.parquet", *(p.name for p in out.glob("*.tar"))]:
        assert (out / name).read_bytes() == (other / name).read_bytes(), name


def test_filters_drop_segments_with_their_reason(segments, tmp_path):
    out = tmp_path / "filtered"
    summary = run(_cfg(segments, out, "labelers=[quality]", "filters.min_dnsmos=4.9"))
    rejects = [r for r in pq.read_table(out / "rejects.parquet").to_pylist() if r["stage"] == "filter"]
    kinds = {rec["kind"] for rec, _ in _samples(out).values()}
    assert kinds == {"sound"} and summary["segments_filtered"] == 2       # the music (cut as sound) stays
    assert sorted(r["reason"] for r in rejects) == ["below_min_dnsmos", "below_min_dnsmos"]
    assert all("dnsmos_ovrl" in r["detail"] for r in rejects if r["reason"] == "below_min_dnsmos")


def test_label_refuses_what_is_not_a_segments_output(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a finished segments output"):
        _cfg(tmp_path / "empty", tmp_path / "o", "labelers=[events]")


def test_every_ray_key_label_offers_acts_and_ingest_keys_are_not_offered(segments, tmp_path, stage_tasks):
    """``ray.pack_tasks`` sets how many shards are packed at once; label ingests nothing, so the ingest
    keys are unknown keys (they used to be offered and ignored)."""
    import pipelines.passes

    with pytest.raises(ConfigError) as e:
        _cfg(segments, tmp_path / "o", "labelers=[events]", "ray.ingest_workers=2", "ray.ingest_num_cpus=0.5")
    assert "ray.ingest_workers: unknown key" in str(e.value) and "ray.ingest_num_cpus: unknown key" in str(e.value)
    seen = stage_tasks(pipelines.passes)
    run(_cfg(segments, tmp_path / "one", "labelers=[events]", "ray.pack_tasks=1", "shards.max_samples=1"))
    assert seen["pack"] == 1
