"""Whisper ASR and spoken-language ID: the packaged multilingual base model on real speech synthesis, the
transformers backend on a tiny random checkpoint, and the disagreement score on hand-made pairs."""

import numpy as np
import pytest

from processors.labelers.asr import AsrParams, Whisper, disagreement, normalise
from processors.labelers.models import ModelMissing, check
from processors.tts import espeak


def test_normalise_and_disagreement_on_hand_made_pairs():
    assert normalise("Hello, World!  It's   me.") == "hello world it s me"
    assert disagreement("the cat sat on the mat", "the cat sat on the mat") == 0.0
    assert disagreement("the cat sat on the mat", "The cat sat on a mat.") == pytest.approx(1 / 6, abs=1e-4)
    assert disagreement("the cat sat", "") == 1.0 and disagreement("", "") == 0.0


@pytest.fixture(scope="module")
def base():
    return Whisper(AsrParams(batch_size=4))


def test_the_packaged_base_model_transcribes_and_tells_languages_apart(base):
    english = "The committee will meet again next Tuesday to review the budget."
    clips = [espeak(english, "en-us"), espeak("Guten Morgen, wie geht es Ihnen heute?", "de"),
             np.zeros(16000, np.float32)]
    en, de, _ = base.transcribe(clips)
    assert en.language == "en" and en.language_prob > 0.5
    assert disagreement(english, en.text) <= 0.25, en
    assert de.language == "de", de
    assert base.by == "whisper-base@ctranslate2"


def test_a_missing_or_remote_model_is_named_with_its_key():
    with pytest.raises(ModelMissing, match="label.asr.model: 'openai/whisper-large-v3' is not a local directory"):
        check("openai/whisper-large-v3", "label.asr.model")
    with pytest.raises(ModelMissing, match="not a packaged model"):
        check("whisper-huge", "label.asr.model")


def test_the_transformers_backend_loads_any_local_whisper_checkpoint(tmp_path, base):
    """A tiny random Whisper saved locally goes through the same path a real checkpoint takes."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizerFast)

    tok = WhisperTokenizerFast(tokenizer_file=f"{base.path}/tokenizer.json")
    langs = {t: tok.convert_tokens_to_ids(t) for t in ("<|en|>", "<|de|>", "<|fr|>")}
    cfg = WhisperConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        decoder_start_token_id=tok.convert_tokens_to_ids("<|startoftranscript|>"),
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=cfg.decoder_start_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
        lang_to_id=langs, task_to_id={"transcribe": tok.convert_tokens_to_ids("<|transcribe|>")},
        no_timestamps_token_id=tok.convert_tokens_to_ids("<|notimestamps|>"), is_multilingual=True,
        max_length=32)
    model.save_pretrained(tmp_path / "tiny")
    WhisperProcessor(WhisperFeatureExtractor(), tok).save_pretrained(tmp_path / "tiny")
    asr = Whisper(AsrParams(model=str(tmp_path / "tiny"), backend="transformers", max_new_tokens=8))
    results = asr.transcribe([espeak("hello there", "en-us"), np.zeros(8000, np.float32)])
    assert len(results) == 2 and all(r.language in ("en", "de", "fr") for r in results)
    assert all(isinstance(r.text, str) for r in results) and asr.by == "tiny@transformers"


def test_short_clips_get_a_shorter_window_and_unsure_ones_are_run_again_at_30_s(base, monkeypatch):
    impl = base._impl
    assert [impl.window(int(s * 16000)) // 16000 for s in (0.5, 3.0, 9.5, 12.0, 29.5, 30.0)] == [10, 10, 15, 15, 30, 30]
    from processors.labelers.asr import AsrResult

    assert impl._unsure(AsrResult("to nep to nep to nep to nep to nep to nep to nep to nep to nep to nep", "en", 0.99))
    assert impl._unsure(AsrResult("A short sentence.", "pl", 0.3))
    assert not impl._unsure(AsrResult("A short sentence that reads well.", "en", 0.97))
    windows = []
    run = impl._run
    monkeypatch.setattr(impl, "_run", lambda audios, window: windows.append((len(audios), window)) or run(audios, window))
    # espeak's robotic English on a 10 s window: some clips come out unsure or looping and are redone at 30 s.
    said = ["It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
            "The source of the huge river is the clear spring.", "Help the woman get back to her feet."]
    got = base.transcribe([espeak(s, "en-us") for s in said])
    assert windows[0] == (4, 160000) and len(windows) == 2 and windows[1][1] == 480000, windows
    assert all(r.language == "en" for r in got) and disagreement(" ".join(said), " ".join(r.text for r in got)) <= 0.35


def test_text_that_repeats_itself_is_a_failed_decode():
    from processors.labelers.asr import _repeats

    assert _repeats("1," + "5," * 60) and _repeats("you you you you you you you you you you you you you")
    assert not _repeats("Please call Stella and ask her to bring these things.") and not _repeats("")


def test_noise_and_tones_give_no_text_while_speech_does():
    """Whisper makes up "you" or "Thank you." from sounds without speech, and "1,5,5,5,…" from white noise
    on some CPUs; its own no-speech rule (no-speech probability over 0.6 and an unsure decode) and its
    repetition rule leave them without text."""
    from processors.tts import piper

    sr = 16000
    clips = [np.full(sr * 2, 0.5, np.float32), (0.3 * np.sin(np.arange(sr * 3) * 2 * np.pi * 440 / sr)).astype(np.float32),
             (np.random.default_rng(0).standard_normal(sr * 5) * 0.05).astype(np.float32)]
    speech = piper("Please call Stella and ask her to bring these things.")
    with_rule = Whisper(AsrParams(batch_size=4)).transcribe(clips + [speech])
    assert [r.text for r in with_rule[:3]] == ["", "", ""]
    assert disagreement("please call stella and ask her to bring these things", with_rule[3].text) <= 0.2
    without = Whisper(AsrParams(batch_size=4, no_speech_threshold=1.0)).transcribe(clips)
    assert any(r.text for r in without), without                    # the rule, not the model, cleared them
