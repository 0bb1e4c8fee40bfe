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


# ---- a checkpoint's own chat template (Qwen2-Audio-Instruct's) --------------------------------------------

@pytest.fixture(scope="module")
def instruct():
    """A processor with Qwen2-Audio-Instruct's chat template (a system turn, "Audio N: " before each audio),
    a 128-bin, 30 s front end, and a tokenizer that knows the words below."""
    tok = train_tokenizer(["You are a helpful assistant. Audio what is happening here a dog barks twice",
                           "which language is spoken english french and then silence compare the two"] * 20, 500)
    return build_processor(tok, chunk_s=30, num_mel_bins=128, chat_template=None)


def _served(processor, messages, audios, generation_prompt=False):
    """Token ids as the checkpoint is served: its template, then the processor's audio expansion."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    out = processor(text=[text], audio=audios or None, sampling_rate=16000, return_tensors="pt")
    return out["input_ids"][0].tolist()


def _learned(tok, e):
    """The decoded runs of tokens that carry loss."""
    spans, cur = [], []
    for t, lab in zip(e.input_ids + [None], e.labels + [IGNORE]):
        if lab == IGNORE and cur:
            spans.append(tok.decode(cur))
            cur = []
        elif lab != IGNORE:
            cur.append(t)
    return spans


def _sft(messages, n_audio):
    return Example(id="t", stage="sft", task="analysis", messages=messages,
                   audio=[AudioRef(f"audio{i}.flac", f"s{i}", 1.0) for i in range(n_audio)])


@pytest.mark.parametrize("case", ["single", "multi_turn", "multi_audio", "voice_chat"])
def test_chats_render_through_the_checkpoints_template(instruct, case):
    """Ids equal ``apply_chat_template`` plus the processor's audio expansion; loss only on the answers."""
    a, b = _audio(1.0), _audio(2.5)[: int(2.3 * 16000)]
    convs = {
        "single": ([user_audio_turn("What is happening here?"), assistant_turn("A dog barks twice.")], [a],
                   ["A dog barks twice.<|im_end|>"]),
        "multi_turn": ([user_audio_turn("What is happening here?"), assistant_turn("A dog barks twice."),
                        {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
                        assistant_turn("Silence.")], [a], ["A dog barks twice.<|im_end|>", "Silence.<|im_end|>"]),
        # the second audio is shown first: the placeholders follow the conversation, and so do the features
        "multi_audio": ([{"role": "user", "content": [{"type": "audio", "audio": 1}, {"type": "audio", "audio": 0},
                                                      {"type": "text", "text": "Compare the two."}]},
                         assistant_turn("The first is french.")], [a, b], ["The first is french.<|im_end|>"]),
        "voice_chat": ([{"role": "user", "content": [{"type": "audio", "audio": 0}]}, assistant_turn("english")],
                       [a], ["english<|im_end|>"]),
    }
    messages, audios, answers = convs[case]
    enc = Encoder.for_processor(instruct)
    e = enc.encode(_sft(messages, len(audios)), audios)
    order = [audios[1], audios[0]] if case == "multi_audio" else audios
    assert e.input_ids == _served(instruct, messages, order)
    assert [len(x) for x in e.audios] == [len(x) for x in order]
    assert _learned(instruct.tokenizer, e) == answers
    assert "You are a helpful assistant." in instruct.tokenizer.decode(e.input_ids)     # the template's system turn
    # the generation prompt is the served one with add_generation_prompt
    prompt = enc.prompt_ids(_sft(messages, len(audios)), audios)
    assert prompt == _served(instruct, messages[:-1], order[:1] if case == "multi_turn" else order, True)


def test_dpo_pairs_render_through_the_checkpoints_template(instruct):
    enc = Encoder.for_processor(instruct)
    messages = [user_audio_turn("Which language is spoken?")]
    ex = Example(id="d", stage="dpo", task="lid", audio=[AudioRef("audio0.flac", "s", 1.0)], messages=messages,
                 chosen="english", rejected="french")
    a = _audio(1.0)
    pair = enc.encode(ex, [a])
    for e, reply in ((pair.chosen, "english"), (pair.rejected, "french")):
        assert e.input_ids == _served(instruct, messages + [assistant_turn(reply)], [a])
        assert _learned(instruct.tokenizer, e) == [f"{reply}<|im_end|>"]


def test_a_template_that_rewrites_earlier_turns_is_refused(instruct):
    """A template whose text for the earlier turns changes once an answer follows cannot be masked."""
    from trainer.data import TemplateError

    odd = ("{% for m in messages %}{% if loop.last and m['role'] == 'assistant' %}[final]{% endif %}"
           "<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
           "{% else %}<|audio_bos|><|AUDIO|><|audio_eos|>{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    enc = Encoder(instruct.tokenizer, 30, odd)
    with pytest.raises(TemplateError, match="does not extend"):
        enc.encode(_sft([user_audio_turn("What is happening here?"), assistant_turn("A dog.")], 1), [_audio(1.0)])


def test_the_tiny_presets_template_is_saved_with_its_processor(proc, tmp_path):
    """A fresh preset's export serves in the format it was trained on."""
    from transformers import Qwen2AudioProcessor

    from trainer.model import CHAT_TEMPLATE

    proc.save_pretrained(tmp_path)
    again = Qwen2AudioProcessor.from_pretrained(tmp_path)
    assert again.chat_template == CHAT_TEMPLATE
    messages = [user_audio_turn("What is happening here?"), assistant_turn("A dog barks twice.")]
    a = _audio(1.0)
    assert Encoder.for_processor(again).encode(_sft(messages, 1), [a]).input_ids == _served(again, messages, [a])
