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


class TemplateError(ValueError):
    """A chat template that the trainer cannot mask: rendering a conversation one turn longer does not extend
    the shorter one's text (the answer's tokens could not be told from the prompt's)."""


class Encoder:
    """Turns examples into ``Encoded`` sequences as the checkpoint is served: a chat is rendered by the
    processor's chat template (``apply_chat_template``), tokenised whole, and each audio placeholder expanded
    to the audio's tokens as Qwen2-Audio's processor expands it. Loss is on what each assistant turn adds to
    the text rendered up to its generation prompt, less the whitespace after its end token; the system turn,
    prompts, audio and role headers never carry loss. A pretraining example is the audio, the prompt and the
    target (the Qwen-Audio pretraining form), with loss on the target.

    ``chat_template`` None: the ``tiny``/``small`` presets' template (``trainer.model.CHAT_TEMPLATE``)."""

    def __init__(self, tokenizer, chunk_s: int, chat_template: str | None = None):
        from trainer.model import CHAT_TEMPLATE

        self.tok = tokenizer
        self.chunk_s = chunk_s
        self.template = chat_template or CHAT_TEMPLATE
        ids = tokenizer.convert_tokens_to_ids
        self.audio_bos, self.audio, self.audio_eos = ids("<|audio_bos|>"), ids("<|AUDIO|>"), ids("<|audio_eos|>")
        self.eos = tokenizer.eos_token_id
        self._cached = functools.lru_cache(maxsize=8192)(self._encode)   # prompts and labels repeat

    @classmethod
    def for_processor(cls, processor) -> "Encoder":
        """The encoder of a processor: its tokenizer, audio window and chat template."""
        from trainer.model import chunk_seconds

        return cls(processor.tokenizer, chunk_seconds(processor), getattr(processor, "chat_template", None))

    def _encode(self, s: str) -> tuple[int, ...]:
        return tuple(self.tok.encode(s, add_special_tokens=False)) if s else ()

    def _text(self, s: str) -> list[int]:
        return list(self._cached(s))

    def _audio(self, x: np.ndarray) -> list[int]:
        return [self.audio_bos] + [self.audio] * audio_tokens(len(x), self.chunk_s) + [self.audio_eos]

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        """The conversation's text under the chat template (one ``<|AUDIO|>`` per audio)."""
        if not messages and not generation_prompt:
            return ""
        return self.tok.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                            add_generation_prompt=generation_prompt)

    def pretrain(self, ex: Example, audios: list[np.ndarray]) -> Encoded:
        prefix = [t for x in audios for t in self._audio(x)] + self._text(ex.prompt)
        target = self._text(ex.target) + [self.eos]
        return Encoded(prefix + target, [IGNORE] * len(prefix) + target, audios, ex.task)

    def chat(self, messages: list[dict[str, Any]], audios: list[np.ndarray], reply: str | None = None,
             task: str = "", generation_prompt: bool = False) -> Encoded:
        """The conversation rendered by the chat template; loss on what each assistant turn adds (its content
        and end token). ``reply`` appends one assistant turn; ``generation_prompt`` ends on the assistant
        header (for generation, no loss)."""
        if reply is not None:
            messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": reply}]}]
        text = self.render(messages, generation_prompt)
        spans = []
        for i, m in enumerate([] if generation_prompt else messages):
            if m["role"] != "assistant":
                continue
            last = i == len(messages) - 1      # the whole conversation: already rendered
            before, upto = self.render(messages[:i], True), text if last else self.render(messages[:i + 1])
            if not (upto.startswith(before) and text.startswith(upto)):
                raise TemplateError(f"the chat template renders turn {i + 1} ({m['role']}) in a way that does not "
                                    "extend the turns before it; its answer cannot be masked")
            spans.append((len(before), len(upto.rstrip())))
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, labels, order = [], [], _audio_order(messages)
        k = 0
        for t, (start, _) in zip(enc["input_ids"], enc["offset_mapping"]):
            learn = any(s <= start < e for s, e in spans)
            if t == self.audio:          # the processor's expansion: one <|AUDIO|> per audio token
                if k >= len(order):
                    raise TemplateError(f"the chat template renders more audio placeholders than the "
                                        f"{len(order)} audio(s) of the conversation")
                n = audio_tokens(len(audios[order[k]]), self.chunk_s)
                ids += [t] * n
                labels += [IGNORE] * n
                k += 1
                continue
            ids.append(t)
            labels.append(t if learn else IGNORE)
        if k != len(order):
            raise TemplateError(f"the chat template renders {k} audio placeholders for {len(order)} audio(s)")
        return Encoded(ids, labels, [audios[i] for i in order], task)

    def prompt_ids(self, ex: Example, audios: list[np.ndarray]) -> list[int]:
        """The generation prompt: pretrain prefix, or the chat up to the assistant's header."""
        if ex.stage == "pretrain":
            return [t for x in audios for t in self._audio(x)] + self._text(ex.prompt)
        return self.chat(_prompt_turns(ex), audios, generation_prompt=True).input_ids

    def encode(self, ex: Example, audios: list[np.ndarray]) -> Encoded | PairEncoded:
        if ex.stage == "pretrain":
            return self.pretrain(ex, audios)
        if ex.stage == "sft":
            return self.chat(ex.messages, audios, task=ex.task)
        turns = _prompt_turns(ex)
        return PairEncoded(self.chat(turns, audios, ex.chosen), self.chat(turns, audios, ex.rejected), ex.task)


def _audio_order(messages: list[dict[str, Any]]) -> list[int]:
    """The audios' indices in the order the conversation shows them (the order of the placeholders)."""
    return [c["audio"] for m in messages if not isinstance(m["content"], str)
            for c in m["content"] if c["type"] == "audio"]


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
