"""transformers audio-classification checkpoints from local folders (events, emotion, age, gender): tiny
random models saved here go through the path a real AST or emotion checkpoint takes."""

import numpy as np
import pytest

from processors.labelers.classify import AudioClassifier, check_local
from processors.labelers.models import ModelMissing
from processors.tts import espeak

EVENTS = ["Speech", "Music", "Dog", "Bark", "Telephone", "Silence"]


def tiny_ast(path, labels, multi_label=True):
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    cfg = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_length=128,
                    num_mel_bins=64, id2label=dict(enumerate(labels)), label2id={v: k for k, v in enumerate(labels)},
                    problem_type="multi_label_classification" if multi_label else "single_label_classification")
    torch.manual_seed(len(labels))
    ASTForAudioClassification(cfg).save_pretrained(path)
    ASTFeatureExtractor(num_mel_bins=64, max_length=128).save_pretrained(path)
    return str(path)


def test_a_local_checkpoint_scores_batches_as_it_scores_one_clip(tmp_path):
    tagger = AudioClassifier(tiny_ast(tmp_path / "tiny-ast", EVENTS), "label.events.model", batch_size=2)
    clips = [espeak("one two three", "en-us"), np.zeros(8000, np.float32), espeak("dogs bark", "en-us")[:20000],
             np.random.default_rng(0).standard_normal(30000).astype(np.float32) * 0.1, espeak("hello", "de")]
    together = tagger.scores(clips)
    alone = np.concatenate([tagger.scores([c]) for c in clips])
    assert together.shape == (5, len(EVENTS)) and np.allclose(together, alone, atol=1e-5)
    assert tagger.multi and not np.allclose(together.sum(axis=1), 1.0)          # sigmoids: multi-label
    assert ((0 <= together) & (together <= 1)).all() and len({r.tobytes() for r in together}) == 5
    top = tagger.top(clips, k=3)
    assert all(len(t) == 3 and [s for _, s in t] == sorted((s for _, s in t), reverse=True) for t in top)
    assert {label for t in top for label, _ in t} <= set(EVENTS) and tagger.by == "tiny-ast@transformers"
    assert tagger.top(clips[:1], k=3, min_score=1.1) == [[]]


def test_a_single_label_checkpoint_gives_a_softmax(tmp_path):
    emotion = AudioClassifier(tiny_ast(tmp_path / "emo", ["angry", "happy", "neutral", "sad"], multi_label=False),
                              "label.emotion.model")
    scores = emotion.scores([espeak("I am so happy today", "en-us"), espeak("leave me alone", "en-us")])
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_what_is_not_a_local_checkpoint_is_named_with_its_key(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in ["", str(tmp_path / "empty"), "MIT/ast-finetuned-audioset-10-10-0.4593"]:
        with pytest.raises(ModelMissing) as e:
            check_local(path, "label.events.model")
        assert "label.events.model" in str(e.value) and "local" in str(e.value)


def test_a_gender_checkpoint_must_name_genders(tmp_path):
    from processors.labelers.gender import GenderClassifier, GenderParams

    ok = GenderClassifier(GenderParams(model=tiny_ast(tmp_path / "g", ["female", "male"], False), min_confidence=0.0))
    gender, confidence = ok.classify(espeak("My voice is the one you hear now.", "en-us"))
    assert gender in ("female", "male") and 0 <= confidence <= 1 and ok.by == "g@transformers"
    with pytest.raises(ModelMissing, match="name no gender"):
        GenderClassifier(GenderParams(model=tiny_ast(tmp_path / "bad", ["cat", "dog"], False)))
