import json
import os

import pytest

from processors.sources import SourceError, SourceSpec, check_source, list_inputs
from tests.factories import tone, write


def test_folder_recurses_picks_sidecars_and_survives_link_loops(tmp_path):
    write(tmp_path / "a" / "x.wav", tone(1.0))
    (tmp_path / "a" / "x.txt").write_text("hello world\n")
    write(tmp_path / "a" / "b" / "y.flac", tone(1.0))
    (tmp_path / "a" / "b" / "y.json").write_text(json.dumps({"language": "fr", "label": "chien", "kind": "sound",
                                                             "labels": {"caption": {"text": "a dog", "by": "x"}}}))
    (tmp_path / "a" / "notes.md").write_text("not audio")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")          # directory loop
    os.symlink(tmp_path / "l1.wav", tmp_path / "l2.wav")
    os.symlink(tmp_path / "l2.wav", tmp_path / "l1.wav")               # file link loop
    os.symlink(tmp_path / "gone.wav", tmp_path / "dangling.wav")
    found = list_inputs(SourceSpec(path=str(tmp_path), corpus="c", license="CC0-1.0"))
    items, rejects = found.items, found.rejects
    by_name = {os.path.basename(i.uri): i for i in items}
    assert set(by_name) == {"x.wav", "y.flac"}
    assert by_name["x.wav"].text == "hello world" and by_name["x.wav"].license == "CC0-1.0"
    y = by_name["y.flac"]
    assert (y.language, y.label, y.kind) == ("fr", "chien", "sound") and y.labels.caption.text == "a dog"
    reasons = {os.path.basename(r.uri): (r.reason, r.detail) for r in rejects}
    assert reasons["l1.wav"] == ("unreadable", "symlink loop") and reasons["l2.wav"][0] == "unreadable"
    assert reasons["dangling.wav"][0] == "unreadable"


def test_generic_manifest_with_column_mapping(tmp_path):
    write(tmp_path / "clips" / "u1.wav", tone(1.0))
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"file": "clips/u1.wav", "txt": "one", "dur": 1.0, "spk": "s1", "mood": "calm"}) + "\n"
        + json.dumps({"file": "clips/u2.wav", "txt": "two"}) + "\n")
    spec = SourceSpec(path=str(tmp_path / "m.jsonl"), columns={"audio": "file", "text": "txt", "duration": "dur",
                                                               "speaker": "spk"})
    found = list_inputs(spec)
    items, rejects = found.items, found.rejects
    assert len(items) == 1 and items[0].text == "one" and items[0].duration_s == 1.0 and items[0].speaker == "s1"
    assert items[0].corpus == "m" and json.loads(items[0].extra_json) == {"manifest": {"mood": "calm"}}
    assert [(r.reason, os.path.basename(r.uri)) for r in rejects] == [("missing", "u2.wav")]
    with pytest.raises(SourceError):
        list_inputs(SourceSpec(path=str(tmp_path / "m.jsonl")))  # no "audio" column


def test_csv_and_tsv(tmp_path):
    write(tmp_path / "a.wav", tone(1.0))
    (tmp_path / "m.csv").write_text("audio,text,language\na.wav,\"hi, there\",en\n")
    (tmp_path / "m.tsv").write_text("audio\ttext\na.wav\thi\n")
    assert list_inputs(SourceSpec(path=str(tmp_path / "m.csv"))).items[0].text == "hi, there"
    assert list_inputs(SourceSpec(path=str(tmp_path / "m.tsv"))).items[0].text == "hi"


def test_librispeech_layout(tmp_path):
    chapter = tmp_path / "train-clean" / "1089" / "134686"
    write(chapter / "1089-134686-0000.flac", tone(1.0))
    (chapter / "1089-134686.trans.txt").write_text("1089-134686-0000 HE HOPED THERE WOULD BE STEW\n"
                                                   "1089-134686-0001 MISSING ONE\n")
    found = list_inputs(SourceSpec(path=str(tmp_path / "train-clean"), format="librispeech"))
    items, rejects = found.items, found.rejects
    assert [(i.text, i.speaker, i.language) for i in items] == [("he hoped there would be stew", "1089", "en")]
    assert [r.reason for r in rejects] == ["missing"]


def test_common_voice_tsv(tmp_path):
    write(tmp_path / "de" / "clips" / "c1.wav", tone(1.0))
    (tmp_path / "de" / "train.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
        "abc\tc1.wav\tGuten Morgen\t2\t0\t\t\t\tde\t\n")
    items = list_inputs(SourceSpec(path=str(tmp_path / "de" / "train.tsv"), format="commonvoice")).items
    assert [(i.text, i.language, i.speaker) for i in items] == [("Guten Morgen", "de", "abc")]


def test_esc50_csv(tmp_path):
    write(tmp_path / "audio" / "1-100032-A-0.wav", tone(1.0))
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n1-100032-A-0.wav,1,0,dog,True,100032,A\n")
    items = list_inputs(SourceSpec(path=str(tmp_path / "meta" / "esc50.csv"), format="esc50")).items
    assert [(i.label, i.kind) for i in items] == [("dog", "sound")]
    assert json.loads(items[0].extra_json)["manifest"]["fold"] == "1"


def test_check_source_reports_problems(tmp_path):
    problems = check_source(SourceSpec(path=str(tmp_path / "nope"), format="mp4", kind="noise", columns={"x": "y"}))
    assert len(problems) == 4


def test_fsspec_urls_are_listed_and_decoded(tmp_path):
    """A non-local filesystem goes through fsspec for listing, sidecars and decoding (memory:// here;
    s3:// and gs:// take the same path with the s3 / gcs extras)."""
    import io

    import fsspec
    import soundfile as sf

    from processors.audio import load_standardised

    fs = fsspec.filesystem("memory")
    buf = io.BytesIO()
    sf.write(buf, tone(1.5, sr=22050), 22050, format="WAV")
    fs.pipe("/remote/corpus/a.wav", buf.getvalue())
    fs.pipe("/remote/corpus/a.txt", b"remote words")
    found = list_inputs(SourceSpec(path="memory://remote/corpus"))
    items, rejects = found.items, found.rejects
    assert [(i.uri, i.text) for i in items] == [("memory:///remote/corpus/a.wav", "remote words")] and not rejects
    assert len(load_standardised(items[0].uri)) == 24000
