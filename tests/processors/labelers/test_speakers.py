"""Diarization: DER on hand-made turns, and on a two-voice TTS conversation with known turns."""

import numpy as np
import pytest

from processors.labelers.speakers import Diarizer, SpeakerParams, der
from processors.tts import espeak
from tests.factories import silence


def test_der_on_hand_made_turns():
    ref = [("A", 0.0, 2.0), ("B", 2.0, 4.0)]
    assert der(ref, [("x", 0.0, 2.0), ("y", 2.0, 4.0)]) == 0.0                    # names do not matter
    assert der(ref, [("x", 0.0, 4.0)]) == pytest.approx(0.5)                       # B confused for A
    assert der(ref, [("x", 0.0, 2.0)]) == pytest.approx(0.5)                       # B missed
    assert der(ref, [("x", 0.0, 2.0), ("y", 2.0, 4.0), ("z", 4.0, 5.0)]) == pytest.approx(0.25)   # false alarm


def test_a_two_voice_conversation():
    lines = ["Good morning, did you finish the report about the river?", "Almost, I still need the samples.",
             "They arrived yesterday, I will send them after lunch.", "Perfect, then we present it on Friday."]
    voices = ["en-us+m3", "en-us+f2"]
    parts, truth, t = [], [], 0.0
    for i, line in enumerate(lines):
        x = espeak(line, voices[i % 2])
        parts += [x, silence(0.8)]
        truth.append((voices[i % 2], t, t + len(x) / 16000))
        t += len(x) / 16000 + 0.8
    got = Diarizer(SpeakerParams()).diarize([("k", 0.0, np.concatenate(parts))])["k"]
    assert got.count == 2 and got.turns[0].speaker == "S0"
    assert der(truth, [(s.speaker, s.start_s, s.end_s) for s in got.turns]) < 0.3


def tiny_pyannote(root):
    """A pyannote.audio speaker-diarization pipeline folder with tiny random models (segmentation, WeSpeaker
    embedding, PLDA): the layout of a real local pipeline, for the plumbing, not for accuracy."""
    import os

    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
    import lightning
    import torch
    import yaml
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34
    from pyannote.audio.models.segmentation import PyanNet

    torch.manual_seed(0)
    seg = PyanNet(lstm={"hidden_size": 16, "num_layers": 1, "bidirectional": True, "monolithic": True, "dropout": 0.0},
                  linear={"hidden_size": 16, "num_layers": 1})
    seg.specifications = Specifications(problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME,
                                        duration=5.0, classes=["speaker#1", "speaker#2", "speaker#3"],
                                        powerset_max_classes=2, permutation_invariant=True)
    seg.build()
    emb = WeSpeakerResNet34()
    emb.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=3.0)
    for name, model in (("segmentation", seg), ("embedding", emb)):
        (root / name).mkdir(parents=True)
        trainer = lightning.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu",
                                    enable_progress_bar=False, enable_model_summary=False)
        trainer.strategy.connect(model)
        trainer.save_checkpoint(root / name / "pytorch_model.bin")
    (root / "plda").mkdir()
    rng = np.random.default_rng(0)
    np.savez(root / "plda" / "xvec_transform.npz", mean1=np.zeros(256), mean2=np.zeros(128),
             lda=rng.standard_normal((256, 128)) / 16)
    np.savez(root / "plda" / "plda.npz", mu=np.zeros(128), tr=np.eye(128), psi=np.ones(128))
    (root / "config.yaml").write_text(yaml.safe_dump({
        "dependencies": {"pyannote.audio": "4.0.7"},
        "pipeline": {"name": "pyannote.audio.pipelines.SpeakerDiarization",
                     "params": {"segmentation": str(root / "segmentation"), "embedding": str(root / "embedding"),
                                "plda": str(root / "plda"), "clustering": "AgglomerativeClustering"}},
        "params": {"segmentation": {"min_duration_off": 0.0},
                   "clustering": {"method": "centroid", "min_cluster_size": 1, "threshold": 0.5}}}))
    return root


def test_a_local_pyannote_pipeline_diarizes_the_recording_once_and_cuts_turns_per_segment(tmp_path):
    from processors.labelers.speakers import PyannoteDiarizer

    d = PyannoteDiarizer(SpeakerParams(model=str(tiny_pyannote(tmp_path / "pipe"))))
    lines = [("en-us+m3", "Good morning, did you finish the report about the river?"),
             ("en-us+f2", "Almost, I still need the samples from the second site."),
             ("en-us+m3", "They arrived yesterday, I will send them after lunch.")]
    segments, t = [], 2.0
    for n, (voice, text) in enumerate(lines):
        x = espeak(text, voice)
        segments.append((f"k{n}", t, x))
        t += len(x) / 16000 + 1.5
    t0, audio = d.timeline(list(reversed(segments)))
    assert t0 == 2.0 and all(np.array_equal(audio[round((s - t0) * 16000):][:len(x)], x) for _, s, x in segments)
    reference, _ = d.tracks(audio)                    # the pipeline once over the whole timeline
    assert reference
    names = {lab: f"S{n}" for n, lab in enumerate(dict.fromkeys(lab for lab, _, _ in reference))}
    got = d.diarize(segments)
    for key, start, x in segments:
        a, b = start - t0, start - t0 + len(x) / 16000
        want = [(names[lab], round(max(s, a) - a, 2), round(min(e, b) - a, 2)) for lab, s, e in reference
                if min(e, b) - max(s, a) > 0.01]
        if not want:
            assert key not in got
            continue
        sp = got[key]
        assert [(u.speaker, u.start_s, u.end_s) for u in sp.turns] == want
        assert sp.count == len({w[0] for w in want}) and sp.by == "pipe@pyannote.audio-4.0.7"
        assert all(0 <= u.start_s < u.end_s <= len(x) / 16000 + 0.01 for u in sp.turns)
    assert d.diarize([]) == {}


def test_a_pyannote_pipeline_must_be_a_local_folder(tmp_path):
    from processors.labelers.models import ModelMissing
    from processors.labelers.speakers import check_pipeline

    for path in [str(tmp_path), "pyannote/speaker-diarization-community-1"]:
        with pytest.raises(ModelMissing, match="label.speakers.model: .* local pyannote.audio pipeline"):
            check_pipeline(path)


def test_pyannote_turns_are_cut_to_segments_and_named_by_first_appearance(tmp_path, monkeypatch):
    """The pipeline's turns (here given: a random pipeline hears one voice) are clipped to each segment,
    shifted to its start and named S0, S1 by first appearance in the recording; the main speaker's
    embedding goes with each segment."""
    from processors.labelers.speakers import PyannoteDiarizer

    d = PyannoteDiarizer(SpeakerParams(model=str(tiny_pyannote(tmp_path / "pipe"))))
    vectors = {"SPEAKER_00": np.array([0.0, 3.0, 4.0]), "SPEAKER_01": np.array([2.0, 0.0, 0.0])}
    monkeypatch.setattr(d, "tracks", lambda audio: ([("SPEAKER_01", 0.1, 3.0), ("SPEAKER_00", 2.5, 6.0),
                                                     ("SPEAKER_01", 6.5, 9.0)], vectors))
    sec = lambda s: np.ones(int(s * 16000), np.float32)  # noqa: E731
    got = d.diarize([("k1", 6.0, sec(3.0)), ("k0", 2.0, sec(3.5)), ("k2", 10.0, sec(1.0)), ("k3", 12.0, sec(1.0))])
    turns = {k: [(u.speaker, u.start_s, u.end_s) for u in v.turns] for k, v in got.items()}
    assert turns == {"k0": [("S0", 0.1, 3.0), ("S1", 2.5, 3.5)], "k1": [("S1", 0.0, 2.0), ("S0", 2.5, 3.0)],
                     "k2": [("S0", 0.0, 1.0)]}                     # k3 lies after the last turn: no label
    assert got["k0"].count == 2 and got["k2"].count == 1
    assert got["k0"].embedding == (1.0, 0.0, 0.0) and got["k1"].embedding == (0.0, 0.6, 0.8)
