"""Qwen2-Audio models and processors for the three presets.

- ``tiny``: 2-layer encoder and LM, 80 mel bins, 4 s audio window (100 audio tokens); CPU tests.
- ``small``: 4-layer encoder, 4-layer LM, 80 mel bins, 30 s window; a CPU demo and a first GPU run.
- ``qwen2-audio-7b``: an existing HF-format checkpoint from a local directory (``model_dir``).

The tiny and small tokenizers are byte-level BPEs trained locally with ``tokenizers`` on the shards'
text, with the Qwen2-Audio special tokens; the tokenizer travels with every checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
AUDIO_SPAN = "<|audio_bos|><|AUDIO|><|audio_eos|>"

# The chat template of the ``tiny`` and ``small`` presets, saved with their exports: ChatML with no system
# turn and no "Audio N:" label (voice chat and audio analysis are told apart by the conversation itself); an
# audio item is {"type": "audio", "audio": i}. A checkpoint from ``model_dir`` is trained and served with its
# own template (Qwen2-Audio-Instruct's adds a system turn and "Audio 1: " before each audio).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class Preset:
    chunk_s: int               # audio window: mel frames = 100 × chunk_s = 2 × max_source_positions
    num_mel_bins: int
    encoder_layers: int
    encoder_heads: int
    d_model: int
    encoder_ffn: int
    lm_layers: int
    lm_hidden: int
    lm_heads: int
    lm_kv_heads: int
    lm_ffn: int
    vocab_size: int
    tied: bool = True          # the LM head shares the embedding (Qwen2-Audio-7B's does not)


PRESETS = {
    "tiny": Preset(chunk_s=4, num_mel_bins=80, encoder_layers=2, encoder_heads=4, d_model=64, encoder_ffn=256,
                   lm_layers=2, lm_hidden=64, lm_heads=4, lm_kv_heads=2, lm_ffn=256, vocab_size=1000),
    "small": Preset(chunk_s=30, num_mel_bins=80, encoder_layers=4, encoder_heads=4, d_model=256, encoder_ffn=1024,
                    lm_layers=4, lm_hidden=256, lm_heads=4, lm_kv_heads=2, lm_ffn=1024, vocab_size=4000),
}
LARGE_PRESETS = ("qwen2-audio-7b",)
# Qwen2-Audio-7B's shape in all but size (128 mel bins, 30 s window, untied head): the stand-in for a
# released checkpoint in tests and benchmarks (``stand_in_checkpoint``).
STAND_IN = Preset(chunk_s=30, num_mel_bins=128, encoder_layers=2, encoder_heads=4, d_model=64, encoder_ffn=256,
                  lm_layers=2, lm_hidden=64, lm_heads=4, lm_kv_heads=2, lm_ffn=256, vocab_size=1000, tied=False)


def audio_tokens(num_samples: int, chunk_s: int) -> int:
    """Audio tokens the encoder emits for ``num_samples`` at 16 kHz (25 per second, window-capped):
    mel frames (10 ms hop) → conv stride 2 → average pool 2. 2 s → 50; 30 s → 750."""
    mel = min(-(-num_samples // 160), chunk_s * 100)
    after_conv = (mel - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE trained on ``texts`` with the Qwen2-Audio special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:])


def build_processor(tokenizer, chunk_s: int, num_mel_bins: int = 80, chat_template: str | None = CHAT_TEMPLATE):
    """A Qwen2-Audio processor; ``chat_template`` None gives Qwen2-Audio-Instruct's (transformers' default)."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=16000, hop_length=160,
                                 chunk_length=chunk_s, n_fft=400)
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer, chat_template=chat_template)


def preset_config(preset: Preset, vocab_size: int, audio_token_index: int = 0, eos_token_id: int | None = None,
                  pad_token_id: int | None = None):
    """The Qwen2AudioConfig of ``preset`` with a vocabulary of ``vocab_size``."""
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2Config

    enc = Qwen2AudioEncoderConfig(num_mel_bins=preset.num_mel_bins, encoder_layers=preset.encoder_layers,
                                  encoder_attention_heads=preset.encoder_heads, encoder_ffn_dim=preset.encoder_ffn,
                                  d_model=preset.d_model, max_source_positions=preset.chunk_s * 50)
    lm = Qwen2Config(vocab_size=vocab_size, hidden_size=preset.lm_hidden, intermediate_size=preset.lm_ffn,
                     num_hidden_layers=preset.lm_layers, num_attention_heads=preset.lm_heads,
                     num_key_value_heads=preset.lm_kv_heads, max_position_embeddings=4096, tie_word_embeddings=preset.tied,
                     eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return Qwen2AudioConfig(audio_config=enc, text_config=lm, tie_word_embeddings=preset.tied,
                            audio_token_index=audio_token_index)


def build_model(preset: Preset, tokenizer, seed: int = 0):
    """A randomly initialised Qwen2AudioForConditionalGeneration of ``preset`` for ``tokenizer``."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    cfg = preset_config(preset, len(tokenizer), tokenizer.convert_tokens_to_ids("<|AUDIO|>"), tokenizer.eos_token_id,
                        tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(cfg)
    # A reply ends with <|im_end|>: plain ``generate`` stops there, as Qwen2-Audio-Instruct's generation
    # config makes it (otherwise it runs on into "english<|im_end|>english…" up to max_new_tokens).
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def stand_in_checkpoint(path: str, texts: Iterable[str], seed: int = 0, chunk_s: int = STAND_IN.chunk_s) -> str:
    """Write a random checkpoint of Qwen2-Audio-7B-Instruct's architecture at the ``STAND_IN`` size, with a
    tokenizer trained on ``texts`` and the Instruct chat template, by ``save_pretrained``; return ``path``.
    ``chunk_s`` shortens the audio window (a learning benchmark on CPU; every clip costs a whole window)."""
    preset = dataclasses.replace(STAND_IN, chunk_s=chunk_s)
    tok = train_tokenizer(texts, preset.vocab_size)
    processor = build_processor(tok, preset.chunk_s, preset.num_mel_bins, chat_template=None)
    build_model(preset, tok, seed=seed).save_pretrained(path)
    processor.save_pretrained(path)
    return path


SUPPORTED_MODEL_TYPES = ("qwen2_audio",)
# Checkpoints users bring that the trainer knows and does not train yet, with why.
NOT_YET = {
    "qwen2_5_omni": "Qwen2.5-Omni (its thinker) is not supported yet: transformers builds its processor only with "
                    "torchvision (the video processor), and the thinker's 3-D rotary positions are untested here",
}
NOT_YET["qwen2_5_omni_thinker"] = NOT_YET["qwen2_5_omni"]
# What a checkpoint folder needs beside config.json, each by the files that can hold it.
CHECKPOINT_FILES = {"weights": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
                    "tokenizer": ("tokenizer.json", "vocab.json"),
                    "processor config": ("preprocessor_config.json", "processor_config.json")}


def checkpoint_problem(path: str, key: str = "model_dir") -> str | None:
    """Why ``path`` is not a checkpoint the trainer can load, in one line (None when it is): a missing folder
    or config.json, or a model type the trainer does not support (transformers would otherwise build a
    default-size random Qwen2-Audio from a text-only config)."""
    import json
    import os

    config = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        return f"{key}: {path!r} is not a folder"
    try:
        with open(config, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except FileNotFoundError:
        return f"{key}: {path!r} holds no config.json (not a save_pretrained checkpoint)"
    except (OSError, ValueError, AttributeError) as e:
        return f"{key}: {config!r} cannot be read as a model config ({type(e).__name__})"
    if model_type in NOT_YET:
        return f"{key}: {path!r} holds a {model_type!r} checkpoint. {NOT_YET[model_type]}"
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (f"{key}: {path!r} holds a {model_type!r} checkpoint; supported model types: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    missing = [name for name, options in CHECKPOINT_FILES.items()
               if not any(os.path.exists(os.path.join(path, o)) for o in options)]
    if missing:
        return f"{key}: {path!r} is missing its {' and '.join(missing)}"
    return None


def load_pretrained(path: str, dtype=None):
    """Model and processor from a directory written by ``save_pretrained`` (ours or Qwen's)."""
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    processor = Qwen2AudioProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=dtype)
    return model, processor


def chunk_seconds(processor) -> int:
    return int(processor.feature_extractor.chunk_length)
