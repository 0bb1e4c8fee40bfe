"""Example shards → token sequences with loss masks → token-budget batches.

Streaming uses the webdataset package: a deterministic, resampled shard order per rank (every rank sees
the same number of steps, so DDP never waits on a rank that ran dry), tar reading with a handler that
reports and skips a corrupt or truncated shard, and a sample shuffle buffer. The stream is a pure
function of (shards, seed, rank, world), so a resumed run skips the samples it had consumed and continues
with the same order.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import soundfile as sf

from schemas.example import Example
from trainer.losses import IGNORE
from trainer.model import audio_tokens

log = logging.getLogger("audiomill.train")


@dataclasses.dataclass
class Encoded:
    """One training sequence: ids, labels (-100 = no loss) and the audios its <|AUDIO|> runs stand for."""

    input_ids: list[int]
    labels: list[int]
    audios: list[np.ndarray]
    task: str = ""
    position: int = -1     # index of its raw sample in the rank's stream (the resume point)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass
class PairEncoded:
    """A DPO pair: the same prompt and audios with the chosen and the rejected reply."""

    chosen: Encoded
    rejected: Encoded
    task: str = ""
    position: int = -1

    def __len__(self) -> int:
        return max(len(self.chosen), len(self.rejected))


class Encoder:
    """Turns examples into ``Encoded`` sequences exactly as Qwen2-Audio's processor would render them,
    with the loss mask built piece by piece (prompt, audio and role headers never carry loss)."""

    def __init__(self, tokenizer, chunk_s: int):
        self.tok = tokenizer
        self.chunk_s = chunk_s
        ids = tokenizer.convert_tokens_to_ids
        self.audio_bos, self.audio, self.audio_eos = ids("<|audio_bos|>"), ids("<|AUDIO|>"), ids("<|audio_eos|>")
        self.im_start, self.im_end, self.eos = ids("<|im_start|>"), ids("<|im_end|>"), tokenizer.eos_token_id
        self._cached = functools.lru_cache(maxsize=8192)(self._encode)   # prompts and labels repeat
        self.newline = self._text("\n")

    def _encode(self, s: str) -> tuple[int, ...]:
        return tuple(self.tok.encode(s, add_special_tokens=False)) if s else ()

    def _text(self, s: str) -> list[int]:
        return list(self._cached(s))

    def _audio(self, x: np.ndarray) -> list[int]:
        return [self.audio_bos] + [self.audio] * audio_tokens(len(x), self.chunk_s) + [self.audio_eos]

    def pretrain(self, ex: Example, audios: list[np.ndarray]) -> Encoded:
        prefix = [t for x in audios for t in self._audio(x)] + self._text(ex.prompt)
        target = self._text(ex.target) + [self.eos]
        return Encoded(prefix + target, [IGNORE] * len(prefix) + target, audios, ex.task)

    def chat(self, messages: list[dict[str, Any]], audios: list[np.ndarray], reply: str | None = None,
             task: str = "") -> Encoded:
        """ChatML; loss on assistant content and its <|im_end|>. ``reply`` appends one assistant turn."""
        if reply is not None:
            messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": reply}]}]
        ids: list[int] = []
        labels: list[int] = []
        for m in messages:
            head = [self.im_start] + self._text(m["role"] + "\n")
            body: list[int] = []
            content = m["content"]
            for c in ([{"type": "text", "text": content}] if isinstance(content, str) else content):
                body += self._audio(audios[c["audio"]]) if c["type"] == "audio" else self._text(c["text"])
            learn = m["role"] == "assistant"
            ids += head + body + [self.im_end] + self.newline
            labels += [IGNORE] * len(head) + (body + [self.im_end] if learn else [IGNORE] * (len(body) + 1))
            labels += [IGNORE] * len(self.newline)
        return Encoded(ids, labels, audios, task)

    def prompt_ids(self, ex: Example, audios: list[np.ndarray]) -> list[int]:
        """The generation prompt: pretrain prefix, or the chat up to ``<|im_start|>assistant\\n``."""
        if ex.stage == "pretrain":
            return [t for x in audios for t in self._audio(x)] + self._text(ex.prompt)
        turns = _prompt_turns(ex)
        return self.chat(turns, audios).input_ids + [self.im_start] + self._text("assistant\n")

    def encode(self, ex: Example, audios: list[np.ndarray]) -> Encoded | PairEncoded:
        if ex.stage == "pretrain":
            return self.pretrain(ex, audios)
        if ex.stage == "sft":
            return self.chat(ex.messages, audios, task=ex.task)
        turns = _prompt_turns(ex)
        return PairEncoded(self.chat(turns, audios, ex.chosen), self.chat(turns, audios, ex.rejected), ex.task)


def _prompt_turns(ex: Example) -> list[dict[str, Any]]:
    """Messages up to the last user turn (an SFT example's final assistant turn is the answer)."""
    msgs = list(ex.messages)
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


def reference_answer(ex: Example) -> str:
    """What a correct model says: the target, the last assistant turn, or DPO's chosen reply."""
    if ex.stage == "pretrain":
        return ex.target
    if ex.stage == "dpo":
        return ex.chosen
    return "".join(c["text"] for c in ex.messages[-1]["content"] if c["type"] == "text")


class DataError(ValueError):
    """A training sample that cannot be used (bad JSON, a missing or undecodable audio member): skipped and
    counted. Anything else raised while reading data is a bug and stops training."""


class TooMuchBadData(RuntimeError):
    """So much of the data is unreadable that training on the rest would be a mistake."""


def decode_sample(sample: dict[str, Any]) -> tuple[Example, list[np.ndarray]]:
    """A webdataset sample (``json`` + ``audio{i}.flac`` bytes) → the example and its 16 kHz audios. An error
    names the shard and the sample."""
    shard = f"{sample['__url__']}: " if sample.get("__url__") else ""
    try:
        ex = Example.from_json(sample["json"])
    except KeyError:
        raise DataError(f"{shard}{sample.get('__key__', '?')}: no json member") from None
    except (ValueError, TypeError) as e:        # json.JSONDecodeError is a ValueError
        raise DataError(f"{shard}{sample.get('__key__', '?')}: bad example record: {e}") from None
    audios = []
    for ref in ex.audio:
        ext = ref.member
        if ext not in sample:
            raise DataError(f"{shard}{ex.id}: member {ext} missing")
        try:
            x, sr = sf.read(io.BytesIO(sample[ext]), dtype="float32")
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise DataError(f"{shard}{ex.id}: {ext} is not readable audio ({type(e).__name__})") from None
        if sr != 16000 or x.ndim != 1:
            raise DataError(f"{shard}{ex.id}: {ext} is not 16 kHz mono")
        audios.append(x)
    return ex, audios


class SkipCounter:
    """webdataset handler and sample counter: report a corrupt shard or sample and go on, until more than
    ``max_fraction`` of at least ``min_samples`` samples (or ``max_in_a_row`` in a row) were bad."""

    def __init__(self, max_fraction: float = 0.5, min_samples: int = 100, max_in_a_row: int = 1000) -> None:
        self.errors: list[str] = []
        self.skipped = self.good = self.in_a_row = 0
        self.max_fraction, self.min_samples, self.max_in_a_row = max_fraction, min_samples, max_in_a_row

    def __call__(self, exn: Exception) -> bool:
        self.skipped += 1
        self.in_a_row += 1
        text = f"{type(exn).__name__}: {exn}"[:300]
        if len(self.errors) < 100:
            self.errors.append(text)
        if self.skipped <= 5:
            log.warning("skipping unreadable data: %s", text)
        elif self.skipped % 100 == 0:
            log.warning("skipped %d unreadable samples or shards so far", self.skipped)
        self.check()
        return True

    def ok(self) -> None:
        self.good += 1
        self.in_a_row = 0

    def check(self) -> None:
        seen = self.good + self.skipped
        if self.in_a_row >= self.max_in_a_row or (
                seen >= self.min_samples and self.skipped > self.max_fraction * seen):
            raise TooMuchBadData(f"{self.skipped} of {seen} samples could not be read ({self.in_a_row} in a row); "
                                 f"first: {self.errors[0] if self.errors else '?'}")


def shard_order(urls: list[str], seed: int, rank: int, world: int) -> Iterator[str]:
    """Endless, reshuffled each epoch; rank r takes every world-th shard (all shards when there are
    fewer shards than ranks, since samples are then split by index)."""
    epoch = 0
    while True:
        order = sorted(urls)
        random.Random(f"{seed}:{epoch}").shuffle(order)
        yield from (order[rank::world] if len(order) >= world else order)
        epoch += 1


def sample_stream(urls: list[str], seed: int = 0, rank: int = 0, world: int = 1, shuffle_buffer: int = 64,
                  skip: int = 0, errors: SkipCounter | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position, raw sample) pairs, deterministic for its arguments; ``skip`` fast-forwards a resumed
    run past the first ``skip`` positions without decoding them."""
    import webdataset as wds

    handler = errors or SkipCounter()
    by_index = len(urls) < world
    pipeline = wds.DataPipeline(
        lambda: _url_dicts(shard_order(urls, seed, rank, world)),
        wds.tarfile_to_samples(handler=handler),
        wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(seed * 1000 + rank)),
    )
    n = 0
    for i, sample in enumerate(pipeline):
        if by_index and i % world != rank:
            continue
        n += 1
        if n <= skip:
            continue
        yield n - 1, sample


def _url_dicts(urls: Iterator[str]) -> Iterator[dict[str, str]]:
    for u in urls:
        yield {"url": u}


def read_all(urls: list[str], errors: SkipCounter | None = None) -> Iterator[tuple[Example, list[np.ndarray]]]:
    """Every readable example of ``urls`` once, in shard order; a corrupt shard or sample is skipped and
    counted in ``errors`` (a fresh counter when none is given)."""
    import webdataset as wds

    handler = errors or SkipCounter()
    if not urls:        # (webdataset's shard list refuses an empty list)
        return
    for sample in wds.DataPipeline(wds.SimpleShardList(sorted(urls)), wds.tarfile_to_samples(handler=handler)):
        try:
            decoded = decode_sample(sample)
        except DataError as e:
            handler(e)
            continue
        handler.ok()
        yield decoded


def token_batches(items: Iterator[Encoded | PairEncoded], max_tokens: int, max_batch: int = 64) -> Iterator[list]:
    """Group consecutive items so that (batch size × longest sequence) stays within ``max_tokens``.
    A single longer item forms a batch of its own."""
    batch: list = []
    longest = 0
    for item in items:
        n = len(item)
        if batch and (max(longest, n) * (len(batch) + 1) > max_tokens or len(batch) >= max_batch):
            yield batch
            batch, longest = [], 0
        batch.append(item)
        longest = max(longest, n)
    if batch:
        yield batch


def collate(items: list[Encoded], pad_id: int, features) -> dict[str, Any]:
    """Right-padded ids, labels and masks, plus Whisper features of every audio in order (``features``: a
    ``LogMel``, or the processor's feature extractor to build one from)."""
    import torch

    from trainer.features import LogMel

    width = max(len(e) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, e in enumerate(items):
        ids[i, : len(e)] = torch.tensor(e.input_ids)
        labels[i, : len(e)] = torch.tensor(e.labels)
        mask[i, : len(e)] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    audios = [a for e in items for a in e.audios]
    if audios:
        logmel = features if isinstance(features, LogMel) else LogMel(features)
        batch["input_features"], batch["feature_attention_mask"] = logmel(audios)
    return batch
