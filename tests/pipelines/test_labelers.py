"""A labeler is one stage named in config; the labeler pass survives a dying worker; Ray's actor-restart
warning never shows."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from pipelines.config import ConfigError, load_config
from pipelines.curate import CurateConfig, run
from tests.factories import chord_music, silence, tts, write
from tests.pipelines.toy_labelers import zero_crossing_rate

pytestmark = pytest.mark.integration
TOY = "tests.pipelines.toy_labelers:"


def _corpus(d):
    for i in range(3):
        write(d / f"u{i}.wav", np.concatenate([tts(f"Labeler test sentence number {i}.", "en-us"), silence(0.4)]))
    write(d / "music.wav", chord_music(12.0, seed=3))
    return d


def _cfg(inputs, out, *overrides):
    return load_config(CurateConfig, None, ["ray.progress=false", "labelers=[none]", *overrides],
                       {"inputs": [str(inputs)], "output": str(out)})


def _records(out):
    import webdataset as wds

    return [(json.loads(s["json"]), s["flac"]) for s in
            wds.WebDataset([str(p) for p in sorted(out.glob("*.tar"))], shardshuffle=False)]


def test_a_labeler_plugs_in_by_name_and_labels_every_kept_segment(ray_cluster, tmp_path):
    corpus = _corpus(tmp_path / "c")
    plain = tmp_path / "plain"
    run(_cfg(corpus, plain))
    out = tmp_path / "labelled"
    summary = run(_cfg(corpus, out, f"labelers=[{TOY}ZeroCrossing]"))
    records = _records(out)
    assert len(records) == summary["segments"] == len(_records(plain)) >= 4
    for rec, flac in records:
        x, _ = sf.read(io.BytesIO(flac), dtype="float32")
        assert rec["labels"]["caption"] == {"text": f"zcr {zero_crossing_rate(x):.5f}", "by": "toy-zcr@1"}
    # Everything else is as without the labeler.
    strip = lambda rec: {**rec, "labels": {k: v for k, v in rec["labels"].items() if k != "caption"}}  # noqa: E731
    assert [strip(r) for r, _ in records] == [r for r, _ in _records(plain)]


def test_a_labeler_pass_that_loses_its_worker_is_rerun(ray_cluster, tmp_path, capsys):
    corpus = _corpus(tmp_path / "c")
    summary = run(_cfg(corpus, tmp_path / "o", f"labelers=[{TOY}DiesOnce]"))
    assert (corpus / ".labeler-died").exists()
    records = _records(tmp_path / "o")
    assert len(records) == summary["segments"] and all(r["labels"]["caption"]["by"] == "toy-zcr@1" for r, _ in records)
    assert "label: a worker died" in capsys.readouterr().out


def test_a_labeler_that_is_not_one_is_a_config_error(tmp_path):
    (tmp_path / "c").mkdir()
    for name, needle in [("nope", "'nope' is not a labeler name"), ("os:path", "is not a StageFn class"),
                         ("tests.pipelines.toy_labelers:Missing", "cannot load"),
                         ("pipelines.stage:StageFn", "declares no resources")]:
        with pytest.raises(ConfigError) as e:
            _cfg(tmp_path / "c", tmp_path / "o", f"labelers=[{name}]")
        assert needle in str(e.value), (name, e.value)


def test_no_actor_restart_warning_on_a_run_with_an_actor_stage(ray_cluster, tmp_path):
    import ray

    corpus = _corpus(tmp_path / "c")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", str(corpus), str(tmp_path / "o"),
                          f"labelers=[{TOY}ZeroCrossing]", "ray.progress=false"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert "core_worker" not in log and "53727" not in log and "Progress bars disabled" not in log
    assert "audiomill curate summary" in out.stdout


def test_asr_transcribes_speech_and_keeps_a_manifest_transcript(ray_cluster, tmp_path):
    from processors.labelers.asr import disagreement

    d = tmp_path / "c"
    said = "The committee will meet again next Tuesday to review the budget."
    other = "Please remember to water the tomatoes before the afternoon heat."
    write(d / "a.wav", np.concatenate([silence(0.3), tts(said, "en-us"), silence(0.3)]))
    (d / "a.txt").write_text("the committee will meet again next tuesday to review the budget")
    write(d / "b.wav", np.concatenate([silence(0.3), tts(other, "en-us+f2"), silence(0.3)]))
    write(d / "music.wav", chord_music(8.0, seed=1))
    run(_cfg(d, tmp_path / "o", "labelers=[asr]"))
    by_uri = {rec["source"]["uri"].rsplit("/", 1)[1]: rec for rec, _ in _records(tmp_path / "o")}
    a, b = by_uri["a.wav"]["labels"]["transcript"], by_uri["b.wav"]["labels"]["transcript"]
    assert a["by"] == "manifest" and a["text"].startswith("the committee") and a["language"] == "en"
    assert a["disagreement"] == disagreement(a["text"], a["hypothesis"]) <= 0.3
    assert b["by"] == "whisper-base@ctranslate2" and b["language"] == "en" and b["language_prob"] > 0.5
    assert disagreement(other, b["text"]) <= 0.3, b
    assert "transcript" not in by_uri["music.wav"]["labels"]


def test_events_and_music_label_sounds_and_refine_the_kind(ray_cluster, tmp_path):
    import shutil

    from pipelines.demo import build_music

    d = tmp_path / "c"
    d.mkdir()
    shutil.copy("/usr/share/sounds/freedesktop/stereo/phone-incoming-call.oga", d / "ring.oga")
    build_music(tmp_path / "m")
    shutil.copy(tmp_path / "m" / "piano.wav", d / "piano.wav")
    write(d / "talk.wav", np.concatenate([tts("Events come from YAMNet and music from librosa.", "en-us"), silence(0.4)]))
    run(_cfg(d, tmp_path / "o", "labelers=[events,music,quality,gender]"))
    by_uri = {}
    for rec, _ in _records(tmp_path / "o"):
        by_uri.setdefault(rec["source"]["uri"].rsplit("/", 1)[1], []).append(rec)
    ring = by_uri["ring.oga"][0]
    assert ring["kind"] == "sound" and {"Telephone", "Alarm"} & {e["label"] for e in ring["labels"]["events"][:3]}
    piano = by_uri["piano.wav"]
    assert all(r["kind"] == "music" for r in piano)         # cut as sound, refined to music by its events
    assert piano[0]["labels"]["music"]["tempo_bpm"] == pytest.approx(120, rel=0.05)
    assert "Piano" in piano[0]["labels"]["music"].get("instruments", []) or piano[0]["labels"]["music"]["key"]
    talk = by_uri["talk.wav"][0]
    assert talk["kind"] == "speech" and talk["labels"]["events"][0]["label"] == "Speech"
    q = talk["labels"]["quality"]
    assert 1 <= q["dnsmos_ovrl"] <= 5 and q["dnsmos_by"].startswith("dnsmos@") and q["by"] == "audiomill.measure@1"
    assert "dnsmos_ovrl" not in ring["labels"]["quality"]            # DNSMOS is for speech
    assert talk["labels"]["paralinguistic"]["gender"] == "male" and "paralinguistic" not in ring["labels"]
    import pyarrow.parquet as pq

    rows = {r["uri"].rsplit("/", 1)[1]: r for r in pq.read_table(tmp_path / "o" / "index.parquet").to_pylist()}
    assert rows["piano.wav"]["kind"] == "music" and rows["piano.wav"]["tempo_bpm"] > 0
    assert rows["talk.wav"]["events"][0] == "Speech" and rows["talk.wav"]["dnsmos_ovrl"] == q["dnsmos_ovrl"]


def test_a_misaligned_transcript_is_caught_by_asr_disagreement(ray_cluster, tmp_path):
    import pyarrow.parquet as pq

    d = tmp_path / "c"
    for name, said, written in [("right", "The train leaves the station at nine in the morning.",
                                 "the train leaves the station at nine in the morning"),
                                ("wrong", "Bright lanterns floated over the harbour at night.",
                                 "please remember to water the tomatoes before the heat")]:
        write(d / f"{name}.wav", np.concatenate([silence(0.3), tts(said, "en-us"), silence(0.3)]))
        (d / f"{name}.txt").write_text(written)
    summary = run(_cfg(d, tmp_path / "o", "labelers=[asr]", "filters.max_transcript_disagreement=0.5"))
    rejects = pq.read_table(tmp_path / "o" / "rejects.parquet").to_pylist()
    assert sorted((r["uri"].rsplit("/", 1)[1], r["reason"]) for r in rejects) == [
        ("wrong.wav", "filtered"), ("wrong.wav", "transcript_disagreement")]
    assert summary["accepted"] == 1 and summary["rejected"] == 1 and summary["segments_filtered"] == 1


def test_speaker_ids_are_consistent_across_the_segments_of_a_recording(ray_cluster, tmp_path):
    """A two-voice conversation long enough to be cut into several segments: every segment's speaker id
    names the same voice wherever it is cut from the recording."""
    lines = ["Good morning, did you finish the report about the river?", "Almost, I still need the samples.",
             "They arrived yesterday, I will send them after lunch.", "Perfect, then we present it on Friday.",
             "Should we invite the team from the harbour office?", "Yes, they measured the water last spring.",
             "Then I will book the large room for the meeting.", "Good, and I will bring the printed maps."]
    voices = ["en-us+m3", "en-us+f2"]
    parts, truth = [], []
    for i, line in enumerate(lines):
        parts += [tts(line, voices[i % 2]), silence(1.2)]
        truth.append(voices[i % 2])
    d = tmp_path / "c"
    write(d / "talk.wav", np.concatenate(parts))
    run(_cfg(d, tmp_path / "o", "labelers=[speakers,gender]"))
    recs = sorted((rec for rec, _ in _records(tmp_path / "o")), key=lambda r: r["start_s"])
    assert len(recs) >= 4
    ids_by_voice: dict[str, set] = {}
    for rec in recs:
        sp = rec["labels"]["speakers"]
        assert sp["by"].startswith("resemblyzer@") and len(sp["embedding"]) == 256
        if sp["count"] == 1:
            mid = (rec["start_s"] + rec["end_s"]) / 2
            starts = np.cumsum([0] + [len(p) / 16000 for p in parts])
            voice = truth[min(int(np.searchsorted(starts, mid) - 1) // 2, len(truth) - 1)]
            ids_by_voice.setdefault(voice, set()).add(sp["turns"][0]["speaker"])
    assert all(len(ids) == 1 for ids in ids_by_voice.values()), ids_by_voice
    assert len(ids_by_voice) == 2 and ids_by_voice["en-us+m3"] != ids_by_voice["en-us+f2"]


def test_a_real_corpus_gets_every_label_with_the_default_config(ray_cluster, tmp_path):
    """No labeler setting touched: natural speech (Piper's joe voice), Spanish TTS, a two-voice dialog, a
    freedesktop ring tone and a fluidsynth piano piece come out with transcripts, languages, speakers,
    events, music, gender and DNSMOS."""
    import shutil

    from pipelines.demo import build_music
    from processors.labelers.asr import disagreement
    from processors.tts import piper

    d = tmp_path / "c"
    said = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
            "It's easy to tell the depth of a well."]
    write(d / "talk.wav", np.concatenate([silence(0.3)] + [np.concatenate([piper(s), silence(0.5)]) for s in said]))
    write(d / "es.wav", np.concatenate([silence(0.3), tts("Hoy hace buen tiempo y vamos a dar un largo paseo por el parque.",
                                                          "es"), silence(0.3)]))
    lines = [("joe", "Did you finish the report about the river?"), ("en-us+f2", "Almost, I still need the samples."),
             ("joe", "They arrived yesterday, I will send them after lunch."), ("en-us+f2", "Perfect, thank you.")]
    write(d / "dialog.wav", np.concatenate([np.concatenate([piper(t) if v == "joe" else tts(t, v), silence(0.5)])
                                            for v, t in lines]))
    shutil.copy("/usr/share/sounds/freedesktop/stereo/phone-incoming-call.oga", d / "ring.oga")
    build_music(tmp_path / "m")
    shutil.copy(tmp_path / "m" / "piano.wav", d / "piano.wav")

    summary = run(load_config(CurateConfig, None, ["ray.progress=false"], {"inputs": [str(d)], "output": str(tmp_path / "o")}))
    by_uri: dict[str, list] = {}
    for rec, _ in _records(tmp_path / "o"):
        by_uri.setdefault(rec["source"]["uri"].rsplit("/", 1)[1], []).append(rec)
    talk = by_uri["talk.wav"]
    text = " ".join(r["labels"]["transcript"]["text"] for r in talk)
    assert disagreement(" ".join(said), text) <= 0.2, text
    for r in talk:
        labels = r["labels"]
        assert labels["transcript"]["language"] == "en" and labels["paralinguistic"]["gender"] == "male"
        assert labels["speakers"]["count"] == 1 and 1 <= labels["quality"]["dnsmos_ovrl"] <= 5
        assert labels["events"][0]["label"] == "Speech"
    assert all(r["labels"]["transcript"]["language"] == "es" for r in by_uri["es.wav"])
    dialog = by_uri["dialog.wav"]
    assert {t["speaker"] for r in dialog for t in r["labels"]["speakers"]["turns"]} == {"S0", "S1"}
    ring = by_uri["ring.oga"][0]
    assert ring["kind"] == "sound" and {"Telephone", "Alarm"} & {e["label"] for e in ring["labels"]["events"][:3]}
    assert "transcript" not in ring["labels"] and "speakers" not in ring["labels"]
    piano = by_uri["piano.wav"]
    assert all(r["kind"] == "music" for r in piano)
    assert piano[0]["labels"]["music"]["tempo_bpm"] == pytest.approx(120, rel=0.05)
    assert summary["hours_by_language"].keys() == {"en", "es"}
    assert summary["speaker_counts"] and summary["top_events"]


def test_local_checkpoints_label_events_emotion_and_age(ray_cluster, tmp_path):
    """Events from a transformers AudioSet tagger, emotion and age from classifiers, all from local folders;
    [auto] takes the emotion labeler only once a model is set."""
    import dataclasses

    from pipelines.stages.label import expand
    from pipelines.stages.labelers import LabelParams
    from processors.labelers.classify import EmotionParams
    from tests.processors.labelers.test_classify import EVENTS, tiny_ast

    events = tiny_ast(tmp_path / "tiny-ast", EVENTS)
    emotion = tiny_ast(tmp_path / "emo", ["angry", "happy", "neutral", "sad"], multi_label=False)
    age = tiny_ast(tmp_path / "age", ["child", "teen", "adult", "senior"], multi_label=False)
    assert "emotion" not in expand(["auto"], LabelParams())
    assert "emotion" in expand(["auto"], dataclasses.replace(LabelParams(), emotion=EmotionParams(model=emotion)))
    run(_cfg(_corpus(tmp_path / "c"), tmp_path / "o", "labelers=[events,emotion]", f"label.events.model={events}",
             f"label.emotion.model={emotion}", f"label.emotion.age_model={age}"))
    records = [rec for rec, _ in _records(tmp_path / "o")]
    assert records and all(e["by"] == "tiny-ast@transformers" and e["label"] in EVENTS
                           for rec in records for e in rec["labels"]["events"])
    for rec in records:
        p = rec["labels"].get("paralinguistic")
        if rec["kind"] == "speech":
            assert p["emotion"] in ("angry", "happy", "neutral", "sad") and p["age"] in ("child", "teen", "adult", "senior")
            assert p["by"] == "emo@transformers+age@transformers"
        else:
            assert p is None
    with pytest.raises(ConfigError, match="label.emotion.age_model"):
        _cfg(tmp_path / "c", tmp_path / "o2", "labelers=[emotion]", f"label.emotion.age_model={tmp_path / 'nope'}")


def test_a_local_pyannote_pipeline_labels_speakers_in_curate(ray_cluster, tmp_path):
    from tests.processors.labelers.test_speakers import tiny_pyannote

    pipe = tiny_pyannote(tmp_path / "pipe")
    run(_cfg(_corpus(tmp_path / "c"), tmp_path / "o", "labelers=[speakers]", f"label.speakers.model={pipe}"))
    records = [rec for rec, _ in _records(tmp_path / "o")]
    speech = [r for r in records if r["kind"] == "speech"]
    assert speech and all(r["labels"]["speakers"]["by"] == "pipe@pyannote.audio-4.0.7" for r in speech)
    assert all("speakers" not in r["labels"] for r in records if r["kind"] != "speech")
    with pytest.raises(ConfigError, match="label.speakers.model: .* local pyannote.audio pipeline"):
        _cfg(tmp_path / "c", tmp_path / "o2", "labelers=[speakers]", f"label.speakers.model={tmp_path / 'c'}")
