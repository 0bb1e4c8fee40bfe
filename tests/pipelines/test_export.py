"""Exports: HF datasets loads its own export and decodes the audio; the ms-swift and LLaMA-Factory files
follow those projects' documented formats (neither installs here without replacing the pinned torch and
transformers), checked field by field, with every audio path readable."""

import json

import pytest
import soundfile as sf

from pipelines.export import export

pytestmark = pytest.mark.integration


def test_hf_datasets_loads_the_export_and_decodes_its_audio(outputs, tmp_path):
    import datasets

    _, _, ex = outputs
    lines = export(str(ex), "hf", str(tmp_path / "out"))
    manifest = json.loads((ex / "manifest.json").read_text())
    counts = manifest["summary"]["examples_by_stage_task"]
    for stage in ("pretrain", "sft", "dpo"):
        ds = datasets.load_from_disk(str(tmp_path / "out" / "hf" / stage))
        assert len(ds) == sum(n for k, n in counts.items() if k.split("/")[0] == stage and "/eval/" not in k)
        row = ds[0]
        audio = row["audio"][0].get_all_samples()
        assert audio.sample_rate == 16000 and audio.data.shape[1] > 1000
        pq = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "parquet" / f"{stage}.parquet"),
                                   split="train")
        assert len(pq) == len(ds) and pq.features["audio"].feature.sampling_rate == 16000
    dpo = datasets.load_from_disk(str(tmp_path / "out" / "hf" / "dpo"))
    assert all(r["chosen"] and r["rejected"] and r["rejected_kind"] for r in dpo)
    assert any("dpo" in line for line in lines)
    with pytest.raises(ValueError, match="not empty"):
        export(str(ex), "hf", str(tmp_path / "out"))


def _check_audio_tags(text_with_tags: str, audios: list[str]) -> None:
    assert text_with_tags.count("<audio>") == len(audios)
    for path in audios:
        x, sr = sf.read(path)
        assert sr == 16000 and len(x) > 0


def test_ms_swift_rows_follow_its_standard_format(outputs, tmp_path):
    _, _, ex = outputs
    export(str(ex), "ms-swift", str(tmp_path / "swift"))
    for stage in ("pretrain", "sft", "dpo"):
        rows = [json.loads(line) for line in (tmp_path / "swift" / f"{stage}.jsonl").read_text().splitlines()]
        assert rows
        for r in rows:
            assert set(r) <= {"messages", "audios", "rejected_response"} and r["messages"][-1]["role"] == "assistant"
            assert all(m["role"] in ("user", "assistant") and isinstance(m["content"], str) for m in r["messages"])
            _check_audio_tags("".join(m["content"] for m in r["messages"] if m["role"] == "user"), r["audios"])
            assert ("rejected_response" in r) == (stage == "dpo")
            if stage == "dpo":
                assert r["rejected_response"] != r["messages"][-1]["content"]


def test_llama_factory_rows_and_dataset_info_follow_its_sharegpt_format(outputs, tmp_path):
    _, _, ex = outputs
    export(str(ex), "llama-factory", str(tmp_path / "lf"))
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert set(info) == {"audiomill_pretrain", "audiomill_sft", "audiomill_dpo"}
    for name, entry in info.items():
        dpo = name.endswith("dpo")
        assert entry["formatting"] == "sharegpt" and entry["ranking"] is dpo and entry["columns"]["audios"] == "audios"
        rows = json.loads((tmp_path / "lf" / entry["file_name"]).read_text())
        for r in rows:
            conv = r[entry["columns"]["messages"]]
            # human turns at odd positions, gpt at even (LLaMA-Factory's rule); a preference row ends on human
            assert [c["from"] for c in conv] == (["human", "gpt"] * len(conv))[:len(conv)]
            assert (conv[-1]["from"] == "human") == dpo
            _check_audio_tags("".join(c["value"] for c in conv if c["from"] == "human"), r["audios"])
            if dpo:
                assert r["chosen"]["from"] == r["rejected"]["from"] == "gpt" and r["chosen"]["value"] != r["rejected"]["value"]
