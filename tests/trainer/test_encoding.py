"""The encoder renders examples exactly as Qwen2-Audio's processor does and puts loss only on answers."""

import numpy as np
import pytest

from schemas.example import AudioRef, Example, assistant_turn, user_audio_turn
from trainer.data import Encoder, PairEncoded, collate, token_batches
from trainer.losses import IGNORE
from trainer.model import PRESETS, audio_tokens, build_model, build_processor, train_tokenizer


@pytest.fixture(scope="module")
def proc():
    tok = train_tokenizer(["detect the language and recognize the speech", "what is happening here",
                           "a dog barks twice", "english french german"] * 20, vocab_size=400)
    return build_processor(tok, chunk_s=4)


def _audio(seconds):
    return np.random.default_rng(0).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)


def test_audio_token_count_is_25_per_second_and_window_capped():
    assert audio_tokens(32000, 30) == 50 and audio_tokens(480000, 30) == 750 and audio_tokens(10 * 16000, 4) == 100


def test_pretrain_encoding_matches_the_processor_and_masks_the_prefix(proc):
    enc = Encoder(proc.tokenizer, chunk_s=4)
    ex = Example(id="ex-1", stage="pretrain", task="lid", audio=[AudioRef("audio0.flac", "seg-1", 2.0)],
                 prompt="Detect the language:", target="english")
    a = _audio(2.0)
    e = enc.encode(ex, [a])
    ref = proc(text=["<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language:english<|endoftext|>"], audio=[a],
               sampling_rate=16000, return_tensors="pt")
    assert e.input_ids == ref["input_ids"][0].tolist()
    learned = [t for t, lab in zip(e.input_ids, e.labels) if lab != IGNORE]
    assert proc.tokenizer.decode(learned) == "english<|endoftext|>"


def test_chat_encoding_matches_the_template_and_learns_only_assistant_turns(proc):
    enc = Encoder(proc.tokenizer, chunk_s=4)
    msgs = [user_audio_turn("What is happening here?"), assistant_turn("A dog barks twice."),
            {"role": "user", "content": [{"type": "text", "text": "And then?"}]}, assistant_turn("Silence.")]
    ex = Example(id="ex-2", stage="sft", task="analysis", audio=[AudioRef("audio0.flac", "seg-1", 1.0)], messages=msgs)
    a = _audio(1.0)
    e = enc.encode(ex, [a])
    text = proc.apply_chat_template(msgs, tokenize=False)
    ref = proc(text=[text], audio=[a], sampling_rate=16000, return_tensors="pt")
    assert e.input_ids == ref["input_ids"][0].tolist()
    learned = [t if lab != IGNORE else None for t, lab in zip(e.input_ids, e.labels)]
    spans, cur = [], []
    for t in learned:
        if t is None and cur:
            spans.append(proc.tokenizer.decode(cur))
            cur = []
        elif t is not None:
            cur.append(t)
    assert spans == ["A dog barks twice.<|im_end|>", "Silence.<|im_end|>"]
    assert proc.tokenizer.convert_tokens_to_ids("<|AUDIO|>") not in [t for t in learned if t is not None]


def test_dpo_pair_shares_the_prompt(proc):
    enc = Encoder(proc.tokenizer, chunk_s=4)
    ex = Example(id="ex-3", stage="dpo", task="analysis", audio=[AudioRef("audio0.flac", "s", 1.0)],
                 messages=[user_audio_turn("What is happening here?")], chosen="A dog barks.", rejected="A cat.")
    pair = enc.encode(ex, [_audio(1.0)])
    assert isinstance(pair, PairEncoded)
    first = pair.chosen.labels.index(next(lab for lab in pair.chosen.labels if lab != IGNORE))
    assert pair.chosen.input_ids[:first] == pair.rejected.input_ids[:first]


def test_token_budget_batches_and_collate_runs_the_model(proc):
    enc = Encoder(proc.tokenizer, chunk_s=4)
    items = []
    for i, sec in enumerate([1.0, 2.0, 0.5, 3.0, 1.5]):
        ex = Example(id=f"ex-{i}", stage="pretrain", task="lid", audio=[AudioRef("audio0.flac", "s", sec)],
                     prompt="Detect the language:", target="english")
        items.append(enc.encode(ex, [_audio(sec)]))
    batches = list(token_batches(iter(items), max_tokens=200))
    assert sum(len(b) for b in batches) == 5
    assert all(len(b) == 1 or len(b) * max(len(e) for e in b) <= 200 for b in batches)
    model = build_model(PRESETS["tiny"], proc.tokenizer)
    batch = collate(batches[0], proc.tokenizer.pad_token_id, proc.feature_extractor)
    out = model(**batch)
    assert out.loss is not None and np.isfinite(out.loss.item())


@pytest.mark.parametrize("chunk_s,lengths_s", [(4, [0.3, 1.7, 3.99, 4.0, 6.5]), (30, [0.01, 2.0, 12.345, 29.99, 31.0])])
def test_logmel_matches_the_whisper_feature_extractor(chunk_s, lengths_s):
    """A batch of mixed lengths (shorter, equal to and longer than the window; a near-silent clip and a
    loud one), against the extractor itself: features within float rounding, masks identical."""
    import torch

    from trainer.features import LogMel

    fe = build_processor(train_tokenizer(["a b c"] * 5, vocab_size=300), chunk_s=chunk_s).feature_extractor
    rng = np.random.default_rng(1)
    audios = [rng.normal(0, 0.3, int(s * 16000)).astype(np.float32) for s in lengths_s]
    audios[0] *= 1e-4
    audios[2] = np.sin(np.arange(len(audios[2])) * 0.05).astype(np.float32)
    ref = fe(audios, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="pt")
    feats, mask = LogMel(fe)(audios)
    assert feats.shape == ref["input_features"].shape and feats.dtype == torch.float32
    assert torch.equal(mask, ref["attention_mask"].long())
    assert (feats - ref["input_features"]).abs().max().item() < 1e-4
    # Each clip alone gives the same features as in the batch (the STFT span follows the longest clip).
    for i, a in enumerate(audios):
        alone, _ = LogMel(fe)([a])
        assert (alone[0] - feats[i]).abs().max().item() < 1e-5


def test_a_saved_model_stops_generating_at_the_end_of_its_reply(proc, tmp_path):
    """Plain ``generate`` on an export stops at <|im_end|>: a chat reply ends there, as it does for
    Qwen2-Audio-Instruct (without it a reply ran on into "english<|im_end|>english…")."""
    from transformers import GenerationConfig

    build_model(PRESETS["tiny"], proc.tokenizer).save_pretrained(tmp_path)
    eos = GenerationConfig.from_pretrained(tmp_path).eos_token_id
    assert set(eos) == {proc.tokenizer.eos_token_id, proc.tokenizer.convert_tokens_to_ids("<|im_end|>")}
