"""`audiomill build`: a labelled corpus → pretrain, SFT and DPO shards that `audiomill train-all` trains on;
every target checked against the segment's labels by rules written apart from the builders; held-out sets
share no recording and no voice with training; reruns are byte-identical and resume; decontamination, the
mix and the config checks."""

import io
import json
import re
import shutil
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipelines.build import BuildConfig, run
from pipelines.config import ConfigError, load_config
from pipelines.curate import CurateConfig
from pipelines.curate import run as curate
from pipelines.output import OutputConflict
from tests.factories import chord_music, ffmpeg, silence, tiny_checkpoint, tiny_text_lm, tts, write

pytestmark = pytest.mark.integration

# Voices that resemblyzer tells apart (same voice ≥ 0.89, different ≤ 0.72 cosine): Piper's joe, flite's
# slt, awb, kal and rms, espeak-ng's German.
SENTENCES = {
    "a0": ("piper:joe", "en", "The harbour master counted seven boats before the storm arrived."),
    "a1": ("piper:joe", "en", "Fresh bread was delivered to the bakery early every morning."),
    "b0": ("flite:slt", "en", "She planted tomatoes and beans along the garden fence."),
    "b1": ("flite:slt", "en", "A yellow kite drifted slowly over the quiet village."),
    "c0": ("espeak:de", "de", "Der Zug nach Berlin fährt heute eine Stunde später ab."),
    "d0": ("flite:awb", "en", "Please remember to close the windows before you leave the office."),
}


TRANSLATION = "Le capitaine du port a compté sept bateaux avant l'arrivée de la tempête."


def say(voice: str, text: str) -> np.ndarray:
    from processors.builders.chat import parse_voice, speak

    return speak(text, parse_voice(voice + "@160"))


@pytest.fixture(scope="module")
def labelled(ray_cluster, tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    for name, (voice, lang, text) in SENTENCES.items():
        write(raw / f"{name}.wav", np.concatenate([silence(0.3), say(voice, text), silence(0.3)]))
        side = {"text": text, "language": lang}
        if name == "a0":
            side["labels"] = {"translation": {"fr": TRANSLATION}}
        (raw / f"{name}.json").write_text(json.dumps(side))
    dialog = np.concatenate([say("flite:kal", "Did you bring the map for the hike?"), silence(0.4),
                             say("flite:rms", "Yes, and enough water for both of us.")])
    write(raw / "dialog.wav", dialog)
    write(raw / "music.wav", chord_music(12.0, seed=3))
    bell = np.concatenate([0.4 * np.sin(2 * np.pi * f * np.arange(8000) / 16000) * np.exp(-np.arange(8000) / 3000)
                           for f in (880, 660, 880, 660)]).astype(np.float32)
    write(raw / "bell.wav", np.concatenate([bell, silence(0.5), bell]))
    out = tmp_path_factory.mktemp("seg") / "segments"
    curate(load_config(CurateConfig, None, ["ray.progress=false", "labelers=[speakers,events,music,gender]",
                                            "name=build-test"], {"inputs": [str(raw)], "output": str(out)}))
    return raw, out


def _cfg(src, out, *overrides):
    srcs = src if isinstance(src, list) else [src]
    return load_config(BuildConfig, None, ["ray.progress=false", "split.eval_fraction=0.3", *overrides],
                       {"inputs": [str(s) for s in srcs], "output": str(out)})


def read_examples(out):
    """{key: (record, [audio arrays], shard)} from every tar under OUTPUT_DIR."""
    found = {}
    for tar in sorted(out.glob("*/**/*.tar")):
        with tarfile.open(tar) as t:
            members = {}
            for m in t.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = t.extractfile(m).read()
        for key, ms in members.items():
            rec = json.loads(ms["json"])
            audios = [sf.read(io.BytesIO(ms[a["member"]]), dtype="float32")[0] for a in rec["audio"]]
            found[key] = (rec, audios, str(tar.relative_to(out)))
    return found


def segment_labels(segments_dir):
    import webdataset as wds

    return {s["__key__"]: json.loads(s["json"])
            for s in wds.WebDataset([str(p) for p in sorted(segments_dir.glob("*.tar"))], shardshuffle=False)}


# ---- an independent check of what a text claims against the labels it cites ---------------------------

LANGS = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "zh": "Chinese",
         "ja": "Japanese", "ru": "Russian"}
DISTRACTORS = ("dog", "car horn", "siren", "applause", "rain", "telephone", "thunder", "church bell", "laughter",
               "door", "bird", "baby cry")


def claims_ok(text: str, labels: dict) -> bool:
    """No language, number or common event the labels do not hold."""
    low = text.lower()
    t = labels.get("transcript", {})
    said = t.get("text", "").lower()
    for code, name in LANGS.items():
        if name.lower() in low and t.get("language") != code and name.lower() not in said:
            return False
    events = {e["label"].lower() for e in labels.get("events", [])}
    if any(d in low and d not in events and d not in said for d in DISTRACTORS):
        return False
    numbers = {str(labels.get("speakers", {}).get("count", ""))}
    for turn in labels.get("speakers", {}).get("turns", []):
        numbers |= {f"{turn['start_s']:.2f}", f"{turn['end_s']:.2f}"}
    for e in labels.get("events", []):
        if e.get("start_s") is not None:
            numbers |= {f"{e['start_s']:.2f}", f"{e['end_s']:.2f}"}
    music = labels.get("music", {})
    if music.get("tempo_bpm"):
        numbers.add(str(round(music["tempo_bpm"])))
    numbers |= set(re.findall(r"\d+(?:\.\d+)?", said))
    if any(n not in numbers for n in re.findall(r"\b\d+(?:\.\d+)?\b", low.replace(said, ""))):
        return False
    words = {"one": 1, "two": 2, "three": 3}
    for w, n in words.items():
        if re.search(rf"\b{w} (speaker|voice|people)", low) and labels.get("speakers", {}).get("count") != n:
            return False
    m = re.search(r"says: \"(.*)\"", text)
    return not (m and m.group(1) != t.get("text", "").strip())


def reply_text(msg):
    return "".join(c["text"] for c in msg["content"] if c["type"] == "text")


def test_build_writes_examples_that_agree_with_their_labels_and_train_all_trains_on(labelled, tmp_path):
    raw, segments = labelled
    out = tmp_path / "examples"
    summary = run(_cfg(segments, out))
    examples = read_examples(out)
    labels = segment_labels(segments)
    index = pq.read_table(out / "index.parquet").to_pylist()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layer"] == "examples" and manifest["parent_version"] == "build-test@1"
    assert len(examples) == len(index) == summary["examples"] == sum(s["samples"] for s in manifest["shards"])
    assert {r["key"] for r in index} == set(examples)
    stages_tasks = {(r["stage"], r["task"]) for r in index}
    for need in [("pretrain", "asr"), ("pretrain", "s2tt"), ("pretrain", "lid"), ("pretrain", "caption"), ("pretrain", "sound_events"),
                 ("pretrain", "speaker"), ("pretrain", "music"), ("pretrain", "timestamps"), ("sft", "analysis"),
                 ("sft", "compare"), ("sft", "voice_chat"), ("dpo", "analysis"), ("dpo", "voice_chat")]:
        assert need in stages_tasks, need
    for key, (rec, audios, shard) in examples.items():
        assert shard.split("/")[0] == rec["stage"] and ("/eval/" in shard) == (index[[r["key"] for r in index].index(key)]["split"] == "eval")
        assert all(len(a) <= 30 * 16000 for a in audios) and len(audios) == len(rec["audio"])
        assert all(abs(len(a) / 16000 - ref["duration_s"]) < 0.01 for a, ref in zip(audios, rec["audio"]))
        assert all(m["role"] != "system" for m in rec.get("messages", []))
        segs = rec["provenance"]["segments"]
        if rec["task"] in ("voice_chat", "mixed_scene"):
            assert rec["messages"][0]["content"] == [{"type": "audio", "audio": 0}]      # the user turn is audio only
        if not segs:
            continue
        own = labels[segs[0]]["labels"]
        if rec["stage"] == "pretrain":
            assert claims_ok(rec["target"], own), (rec["task"], rec["target"], own)
            if rec["task"] == "asr":
                assert rec["target"] == f"<|{own['transcript']['language']}|>{own['transcript']['text'].strip()}"
            if rec["task"] == "s2tt":
                assert rec["target"] == TRANSLATION and "French" in rec["prompt"]
            if rec["task"] == "sound_events":
                assert set(rec["target"].split("; ")) <= {e["label"] for e in own["events"]}
        elif rec["stage"] == "sft" and rec["task"] in ("analysis", "mixed_scene"):
            assert all(claims_ok(reply_text(m), own) for m in rec["messages"] if m["role"] == "assistant"), rec
        elif rec["stage"] == "dpo" and rec["task"] == "analysis":
            assert claims_ok(rec["chosen"], own) and not claims_ok(rec["rejected"], own), rec
        for used in rec["provenance"]["labels_used"]:
            where, _, field = used.partition(".")
            if where == "extra":                                   # a source's own field, as the segment holds it
                record = labels[segs[0]]
                assert field in record["extra"] or f"{field}_fr" in record["extra"].get("manifest", {}), used
            else:
                assert where in own, (used, own)
    kinds = {rec["rejected_kind"] for rec, _, _ in examples.values() if rec["stage"] == "dpo"}
    assert {"hallucinated_event", "wrong_language", "wrong_clip", "ignored_instruction"} <= kinds
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    music_seg = next(k for k, v in labels.items() if v["source"]["uri"].endswith("music.wav"))
    assert {"uri": music_seg, "stage": "pretrain", "reason": "no_transcript", "detail": "asr: no transcript",
            "duplicate_of": None} in rejects
    div = manifest["summary"]["template_diversity"]["pretrain/asr"]
    assert 1 <= div["templates"] <= div["of"] and 0 <= div["entropy_bits"] <= div["max_bits"]

    from trainer.config import TrainConfig
    from trainer.launch import run_all

    trained = run_all(load_config(TrainConfig, None, ["max_steps=2", "launcher=local"],
                                  {"examples": str(out), "output": str(tmp_path / "train")}))
    assert set(trained) == {"pretrain", "sft", "dpo"} and (tmp_path / "train" / "dpo" / "final" / "config.json").exists()
    assert trained["dpo"]["eval"]["held_out"] == "dpo/eval"


def test_held_out_examples_share_no_recording_and_no_voice_with_training(labelled, tmp_path):
    _, segments = labelled
    out = tmp_path / "examples"
    run(_cfg(segments, out, "split.eval_fraction=0.4"))
    labels = segment_labels(segments)
    sides = {"train": set(), "eval": set()}
    for r in pq.read_table(out / "index.parquet").to_pylist():
        sides[r["split"]] |= set(r["segments"])
    assert sides["eval"] and sides["train"]
    source = {k: v["source"]["sha256"] for k, v in labels.items()}
    assert not {source[s] for s in sides["eval"]} & {source[s] for s in sides["train"]}
    emb = lambda s: np.asarray(labels[s]["labels"].get("speakers", {}).get("embedding") or [], np.float32)  # noqa: E731
    for a in sides["eval"]:
        for b in sides["train"]:
            if emb(a).size and emb(b).size:
                assert float(emb(a) @ emb(b)) < 0.8, (a, b)
    # a0 and a1 are two recordings of one voice: on the same side
    by_name = {v["source"]["uri"].rsplit("/", 1)[1]: k for k, v in labels.items()}
    assert (by_name["a0.wav"] in sides["eval"]) == (by_name["a1.wav"] in sides["eval"])


def test_a_rerun_is_byte_identical_and_resumes_from_built_units(labelled, tmp_path):
    _, segments = labelled
    first, second = tmp_path / "one", tmp_path / "two"
    run(_cfg(segments, first, "keep_work=true"))
    run(_cfg(segments, second))
    shards = lambda d: {s["name"]: s["sha256"] for s in json.loads((d / "manifest.json").read_text())["shards"]}  # noqa: E731
    assert shards(first) == shards(second)
    assert (first / "index.parquet").read_bytes() == (second / "index.parquet").read_bytes()
    # an interrupted run: units built, nothing committed
    markers = sorted((first / "_work" / "examples").glob("*.arrow"))
    stamps = [m.stat().st_mtime_ns for m in markers]
    for p in ["manifest.json", "index.parquet", "rejects.parquet"]:
        (first / p).unlink()
    for d in ["pretrain", "sft", "dpo"]:
        shutil.rmtree(first / d)
    run(_cfg(segments, first, "keep_work=true"))
    assert [m.stat().st_mtime_ns for m in markers] == stamps           # not built again
    assert shards(first) == shards(second)
    with pytest.raises(OutputConflict, match="another configuration"):
        run(_cfg(segments, second, "sft.analysis_turns=1"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflict, match="notes.txt"):
        run(_cfg(segments, tmp_path / "mine"))


def test_a_re_encoded_eval_clip_and_a_quoted_eval_transcript_are_dropped(labelled, tmp_path):
    raw, segments = labelled
    evals = tmp_path / "my-eval"
    evals.mkdir()
    ffmpeg(raw / "b0.wav", evals / "copy.mp3", "-ar", "22050", "-b:a", "64k")
    write(evals / "quote.wav", tts("completely different words", "en-us"))
    (evals / "quote.json").write_text(json.dumps({"text": "bread was delivered to the bakery early every morning"}))
    out = tmp_path / "examples"
    summary = run(_cfg(segments, out, f"decontaminate.eval_sets=[{evals}]", "decontaminate.ngram=6"))
    assert summary["decontaminated"] == {"my-eval": {"items": 2, "unreadable": 0, "eval_audio": 1, "eval_transcript": 1}}
    labels = segment_labels(segments)
    by_name = {v["source"]["uri"].rsplit("/", 1)[1]: k for k, v in labels.items()}
    dropped = {by_name["b0.wav"], by_name["a1.wav"]}
    rejects = [r for r in pq.read_table(out / "rejects.parquet").to_pylist() if r["reason"] == "contaminated"]
    assert {r["uri"] for r in rejects} == dropped
    used = {s for r in pq.read_table(out / "index.parquet").to_pylist() for s in r["segments"]}
    assert not used & dropped and used


def test_target_hours_and_task_weights_set_the_mix(labelled, tmp_path):
    _, segments = labelled
    labels = segment_labels(segments)
    out = tmp_path / "examples"
    summary = run(_cfg(segments, out, "split.eval_fraction=0", "mix.hours.speech=0.001", "mix.task_weights.lid=0",
                       "mix.task_weights.asr=0.5"))
    speech = {k: v for k, v in labels.items() if v["kind"] == "speech"}
    used = {s for r in pq.read_table(out / "index.parquet").to_pylist() for s in r["segments"]} & set(speech)
    hours = sum(speech[k]["duration_s"] for k in used) / 3600
    biggest = max(v["duration_s"] for v in speech.values()) / 3600
    assert 0.001 <= hours < 0.001 + biggest and len(used) < len(speech)
    mix = summary["mix"]["hours_by_kind"]["speech"]
    assert mix["target"] == 0.001 and mix["selected"] == pytest.approx(hours, abs=1e-4)
    by_task = summary["examples_by_stage_task"]
    spoken = [k for k in used if speech[k]["labels"].get("transcript", {}).get("language")]   # asr and lid candidates
    asr = by_task.get("pretrain/asr", 0)
    assert spoken and "pretrain/lid" not in by_task and asr <= len(spoken)
    reasons = summary["rejects_by_reason"]
    assert reasons["over_target_hours"] == len(speech) - len(used)
    assert reasons["task_weight"] == len(spoken) + (len(spoken) - asr)      # every lid, and the asr not drawn


def test_bad_config_lists_every_problem_before_any_work(labelled, tmp_path):
    _, segments = labelled
    with pytest.raises(ConfigError) as e:
        _cfg(segments, tmp_path / "x", "tasks=[asr,poetry]", "mix.task_weights.asr=2", "mix.hours.noise=1",
             "sft.voices=[espeak:en@9000]", "dpo.policy_dir=/nonexistent", "decontaminate.eval_sets=[/nope]",
             "split.eval_fraction=1.5")
    text = str(e.value)
    for part in ["poetry", "mix.task_weights.asr", "noise", "espeak:en@9000", "dpo.policy_dir", "/nope",
                 "split.eval_fraction"]:
        assert part in text, part
    assert not (tmp_path / "x").exists()


def tiny_models(root):
    """A policy as audiomill train exports it (random weights, the tiny preset) and a random causal LM."""
    texts = ["There is one speaker.", "There are 2 speakers.", "I can hear speech and music.",
             "The speech is in English.", "A woman speaks English.", "Rewritten: a man speaks."] * 20
    tok = tiny_checkpoint(root / "policy", texts)
    tiny_text_lm(root / "lm", len(tok))
    tok.save_pretrained(root / "lm")
    return root / "policy", root / "lm"


def test_sampled_pairs_and_reworded_captions_come_from_local_checkpoints_and_are_checked(labelled, tmp_path):
    _, segments = labelled
    policy, lm = tiny_models(tmp_path)
    out = tmp_path / "examples"
    summary = run(_cfg(segments, out, f"dpo.policy_dir={policy}", "dpo.samples=3", "dpo.margin=0.0",
                       "dpo.min_chosen=0.0", f"caption.model={lm}", "caption.max_new_tokens=8",
                       "sft.voice_chat=false", "sft.mixed_scene=0"))
    labels = segment_labels(segments)
    examples = read_examples(out)
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    asked = len(labels)                      # every segment here has a label an analysis question asks about
    assert summary["sampled_replies"] == 3 * asked
    sampled = [rec for rec, _, _ in examples.values() if rec.get("rejected_kind") == "sampled"]
    not_paired = [r for r in rejects if r["stage"] == "dpo" and r["reason"] in ("below_margin", "chosen_below_min",
                                                                                 "identical_samples")]
    assert len(sampled) + len(not_paired) == asked and sampled
    for rec in sampled:
        assert rec["score"]["chosen"] >= rec["score"]["rejected"] and rec["score"]["policy"] == str(policy)
        assert rec["chosen"] != rec["rejected"] and rec["score"]["samples"] == 3
    captions = [rec for rec, _, _ in examples.values() if rec["task"] == "caption"]
    assert summary["caption_rewrites"]["kept"] + summary["caption_rewrites"]["rejected"] == len(captions) > 0
    for rec in captions:
        own = labels[rec["provenance"]["segments"][0]]["labels"]
        assert claims_ok(rec["target"], own)
        if rec["provenance"]["caption_by"] == "labels":
            assert "composed" not in rec["provenance"]
    with pytest.raises(ConfigError, match="qwen2_audio"):
        _cfg(segments, tmp_path / "x", f"dpo.policy_dir={lm}")


def test_shipped_config_holds_every_default_and_the_cli_reports_problems_with_exit_2(tmp_path):
    import dataclasses
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    shipped = yaml.safe_load((root / "configs" / "build.yaml").read_text())
    assert shipped == {k: v for k, v in dataclasses.asdict(BuildConfig()).items() if k not in ("inputs", "output")}
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "build", str(tmp_path / "none"), str(tmp_path / "o"),
                          "tasks=[asr,poetry]", "--config", str(root / "configs" / "build.yaml")],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 2 and "not a finished segments output" in out.stderr and "poetry" in out.stderr
    assert not (tmp_path / "o").exists()


def test_eval_scores_a_checkpoint_per_held_out_task_beside_chance_and_before(labelled, tmp_path):
    from collections import Counter

    from pipelines.evaluate import evaluate_checkpoint, table

    _, segments = labelled
    out = tmp_path / "examples"
    run(_cfg(segments, out, "sft.mixed_scene=0"))
    policy, _ = tiny_models(tmp_path)
    rows = evaluate_checkpoint(str(policy), str(out), before=str(policy))
    held = Counter()
    for r in pq.read_table(out / "index.parquet").to_pylist():
        if r["split"] != "eval":
            continue
        if r["task"] == "analysis" and r["stage"] == "sft":     # each question is scored under its kind
            held.update(("sft", "analysis/" + part.split(".")[0]) for part in r["template"].split("+"))
        else:
            held[(r["stage"], r["task"])] += 1
    scored = {(r["stage"], r["task"]): r for r in rows}
    assert {k for k in held if k[0] != "dpo"} == {k for k in scored if k[0] != "dpo"}
    for (stage, task), r in scored.items():
        if stage != "dpo":
            assert r["n"] == held[(stage, task)] and r["before"] == r["value"]      # the same model before and after
            assert (r["metric"] == "wer") == (task in ("asr", "s2tt")) and (r["chance"] is None or 0 < r["chance"] <= 1)
    pairs = scored[("dpo", "pairs")]
    assert pairs["n"] == sum(n for (s, _), n in held.items() if s == "dpo")
    assert pairs["value"] == 0.0            # against itself as the reference no pair can be preferred
    likely = scored[("dpo", "pairs/likelihood")]
    assert likely["n"] == pairs["n"] and likely["value"] == likely["before"]
    assert "Foundation: spoken language identification" in table(rows)



def test_every_ray_key_build_offers_acts_and_ingest_keys_are_not_offered(labelled, tmp_path, stage_tasks):
    import pipelines.build

    _, segments = labelled
    with pytest.raises(ConfigError) as e:
        _cfg(segments, tmp_path / "o", "ray.ingest_workers=2", "ray.ingest_num_cpus=0.5")
    assert "ray.ingest_workers: unknown key" in str(e.value) and "ray.ingest_num_cpus: unknown key" in str(e.value)
    seen = stage_tasks(pipelines.build)
    run(_cfg(segments, tmp_path / "one", "ray.pack_tasks=1", "shards.per_shard=2", "tasks=[lid]"))
    assert seen["pack_examples"] == 1
