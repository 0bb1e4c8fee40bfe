"""Held-out evaluation: greedy replies scored per task (accuracy, F1 over event sets, WER, grounding), DPO's
preference and reward accuracy, and the one number that ranks checkpoints."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from trainer.config import TRANSCRIPTION_TASKS, TrainConfig
from trainer.data import Encoder, SkipCounter, collate, read_all, reference_answer
from trainer.features import LogMel
from trainer.layout import stage_shards, in_holdout
from trainer.losses import sequence_logprob
from trainer.model import load_pretrained
from trainer.steps import _to, _logits


def evaluate_export(cfg: TrainConfig, final: str, ref_dir: str, device, before: bool = True) -> dict[str, Any]:
    """``evaluate`` on the model saved in ``final``; for DPO with the reference saved in ``ref_dir`` (and,
    with ``before``, the reference's own generation scores beside)."""
    dtype = torch.bfloat16 if cfg.bf16 else None
    model, processor = load_pretrained(final, dtype=dtype)
    ref = load_pretrained(ref_dir, dtype=dtype)[0].to(device).eval() if cfg.stage == "dpo" else None
    return evaluate(cfg, model.to(device), ref, processor, device, before=before)


@torch.no_grad()
def evaluate(cfg: TrainConfig, model, ref, processor, device, before: bool = False,
             generate: bool = True) -> dict[str, Any]:
    """Greedy generation on held-out examples: accuracy per classification task, WER on transcription.
    After DPO: held-out reward accuracy and the chosen-vs-rejected likelihood shift, and (unless not
    ``generate``) generation on the SFT held-out set (``tasks``; with ``before``, the reference's beside it
    as ``tasks_before``), so a DPO run that costs what SFT taught shows it."""
    model.eval()
    if cfg.stage == "dpo":
        pairs, note = held_out_examples(cfg)
        if not pairs:
            return {"examples": 0, "note": note}
        encoder = Encoder.for_processor(processor)
        out = {**_eval_dpo(cfg, model, ref, processor.tokenizer.pad_token_id, LogMel(processor.feature_extractor),
                           encoder, pairs, device), "held_out": note}
        if not generate:
            return out
        sft = dataclasses.replace(cfg, stage="sft")
        tasks = generation_scores(sft, model, processor, device)
        if tasks.get("tasks"):
            out["tasks"], out["tasks_held_out"] = tasks["tasks"], tasks["held_out"]
            if before:
                out["tasks_before"] = generation_scores(sft, ref, processor, device)["tasks"]
        return out
    return generation_scores(cfg, model, processor, device)


@torch.no_grad()
def generation_scores(cfg: TrainConfig, model, processor, device) -> dict[str, Any]:
    """Greedy replies to the held-out examples of ``cfg.stage``, scored per task against their references."""
    model.eval()
    encoder = Encoder.for_processor(processor)
    logmel = LogMel(processor.feature_extractor)
    examples, note = held_out_examples(cfg)
    if not examples:
        return {"examples": 0, "note": note}
    per_task: dict[str, dict[str, list]] = {}
    eos = [processor.tokenizer.eos_token_id, processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    for ex, audios in (item for whole, audios in examples for item in eval_items(whole, audios)):
        ids = torch.tensor([encoder.prompt_ids(ex, audios)], device=device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if audios:
            feats, mask = logmel(audios)
            inputs["input_features"] = feats.to(device, model.dtype)
            inputs["feature_attention_mask"] = mask.to(device)
        out = model.generate(**inputs, max_new_tokens=cfg.eval_max_new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=processor.tokenizer.pad_token_id)
        hyp = processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        slot = per_task.setdefault(eval_task(ex), {"hyp": [], "ref": [], "keywords": []})
        slot["hyp"].append(hyp)
        slot["ref"].append(reference_answer(ex).strip())
        slot["keywords"].append(ex.provenance.get("keywords") or [])
    return {"examples": len(examples), "held_out": note,
            "tasks": {task: score_task(task, s["ref"], s["hyp"], s["keywords"]) for task, s in sorted(per_task.items())}}


def eval_items(ex, audios: list) -> list[tuple[Any, list]]:
    """What is scored of one held-out example: the example, or for an analysis chat each of its questions
    in turn, with the turns before it as they were (so every language or event question counts, not only
    the last one)."""
    if ex.task != "analysis" or not ex.template:
        return [(ex, audios)]
    parts = ex.template.split("+")
    answers = [i for i, m in enumerate(ex.messages) if m["role"] == "assistant"]
    if len(parts) != len(answers):
        return [(ex, audios)]
    return [(dataclasses.replace(ex, messages=ex.messages[:i + 1], template="+".join(parts[:n + 1])), audios)
            for n, i in enumerate(answers)]


def eval_task(ex) -> str:
    """The name an example is scored under: its task, and for an analysis chat also the kind of its last
    question (``analysis/language``, ``analysis/events``; the template's last part), so each kind of question
    gets its own score and chance level rather than one blend."""
    if ex.task == "analysis" and ex.template:
        return "analysis/" + ex.template.split("+")[-1].split(".")[0]
    return ex.task


def held_out_examples(cfg: TrainConfig) -> tuple[list, str]:
    """(examples, where they came from): the ``<stage>/eval`` set, else the seeded held-out slice of the
    training shards; unreadable shards and samples are skipped and counted."""
    import itertools

    errors = SkipCounter(max_fraction=1.0)
    if stage_shards(cfg.examples, cfg.stage, held_out=True):
        found = read_all(stage_shards(cfg.examples, cfg.stage, held_out=True), errors)
        where = f"{cfg.stage}/eval"
    elif cfg.eval_holdout > 0:
        found = ((ex, a) for ex, a in read_all(stage_shards(cfg.examples, cfg.stage), errors) if in_holdout(ex, cfg))
        where = (f"groups sharing no source recording or content with training, held out of {cfg.stage}/ "
                 f"(there is no {cfg.stage}/eval)")
    else:
        return [], f"no {cfg.stage}/eval set and eval_holdout=0: evaluation skipped"
    examples = list(itertools.islice(found, cfg.eval_max_examples))
    note = where + (f"; {errors.skipped} unreadable samples or shards skipped" if errors.skipped else "")
    return examples, note


def score_task(task: str, refs: list[str], hyps: list[str], keywords: list[list[str]] | None = None) -> dict[str, Any]:
    """WER (jiwer) for transcription tasks; exact-match accuracy (case and full stops ignored) with the
    majority-answer chance level for the rest, and for sound events also F1 over the named events beside
    the best constant answer's. Where the examples carry the answer's keywords (voice chat), also the share
    of replies that answer the request (``grounded``: at least half of its keywords said) beside the best
    constant reply's. Plus a few (reference, hypothesis) samples."""
    if task in TRANSCRIPTION_TASKS:
        import jiwer

        out: dict[str, Any] = {"wer": jiwer.wer([_norm(r) for r in refs], [_norm(h) for h in hyps]), "n": len(refs)}
    else:
        acc = sum(_norm(h) == _norm(r) for h, r in zip(hyps, refs)) / len(refs)
        out = {"accuracy": acc, "n": len(refs), "chance": _chance(refs)}
        if task in SET_TASKS:      # a set of names: F1 per example, averaged
            names = SET_TASKS[task]
            out["f1"] = sum(_f1(names(r), names(h)) for r, h in zip(refs, hyps)) / len(refs)
            out["chance_f1"] = max(sum(_f1(names(r), names(c)) for r in refs) / len(refs) for c in set(refs))
        if keywords and all(keywords):
            out["grounded"] = sum(map(_grounded, keywords, hyps)) / len(refs)
            out["chance_grounded"] = max(sum(map(_grounded, keywords, [c] * len(refs))) / len(refs)
                                         for c in set(refs))
    out["samples"] = list(zip(refs, hyps))[:5]
    return out


def _listed(text: str) -> set[str]:
    """The names an analysis answer lists ("I can hear speech, dog and rain." → speech, dog, rain). A name
    with a comma in it ("gunshot, gunfire") splits the same way in the reference and the reply."""
    text = _norm(text)
    text = text[len("i can hear "):] if text.startswith("i can hear ") else text
    return {p.strip() for p in re.split(r",| and ", text) if p.strip()}


# Tasks whose answer is a set of names, and how a reply names them: "; " between AudioSet names (they hold
# commas but never a semicolon), or an analysis answer's listing.
SET_TASKS = {"sound_events": lambda t: {_norm(x) for x in t.split(";") if x.strip()},
             "analysis/events": _listed}


def _f1(r: set[str], h: set[str]) -> float:
    if not r and not h:
        return 1.0
    tp = len(r & h)
    return 2 * tp / (len(r) + len(h)) if tp else 0.0


def _grounded(keywords: list[str], reply: str) -> bool:
    said = set(re.findall(r"\w+", reply.lower()))
    return 2 * sum(k.lower() in said for k in keywords) >= len(keywords)


def _norm(s: str) -> str:
    return " ".join(s.lower().replace(".", " ").split())


def _chance(refs: list[str]) -> float:
    """Accuracy of always answering the most frequent reference."""
    from collections import Counter

    return Counter(map(_norm, refs)).most_common(1)[0][1] / len(refs)


def _eval_dpo(cfg, model, ref, pad_id, logmel, encoder, examples, device) -> dict[str, Any]:
    pairs = [encoder.encode(ex, audios) for ex, audios in examples]
    correct, prefers, prefers_before, shift = 0, 0, 0, 0.0
    for p in pairs:
        b = _to(collate([p.chosen, p.rejected], pad_id, logmel), device)
        if "input_features" in b:
            b["input_features"] = b["input_features"].to(model.dtype)
        lp = sequence_logprob(_logits(model, b), b["labels"])
        rp = sequence_logprob(_logits(ref, b), b["labels"])
        rc, rr = cfg.beta * (lp[0] - rp[0]), cfg.beta * (lp[1] - rp[1])
        correct += int(rc > rr)
        prefers += int(lp[0] > lp[1])
        prefers_before += int(rp[0] > rp[1])
        shift += ((lp[0] - lp[1]) - (rp[0] - rp[1])).item()
    # Reward accuracy is 0.5 for the reference by definition (every margin 0); preference accuracy (the
    # chosen reply more likely than the rejected one) compares the model with the reference itself.
    return {"examples": len(pairs), "reward_accuracy": correct / len(pairs),
            "preference_accuracy": prefers / len(pairs), "preference_accuracy_before": prefers_before / len(pairs),
            "chosen_minus_rejected_logp_shift": shift / len(pairs)}


def headline_metric(scores: dict[str, Any]) -> str:
    """The metric a task is judged by: WER, F1 for event sets, grounding for voice chat, else accuracy."""
    return next(m for m in ("wer", "f1", "grounded", "accuracy") if m in scores)


def held_out_score(result: dict[str, Any]) -> float | None:
    """One number per held-out eval, higher is better: the mean over tasks of their headline metric
    (``headline_metric``), 1 − WER (capped at 0) for transcription; after DPO, the SFT tasks (what SFT taught
    must stay). Without tasks, held-out preference accuracy (how often the chosen reply is the likelier one),
    else reward accuracy (0.5 for the starting model by definition). None without held-out examples."""
    tasks = result.get("tasks") or {}
    if tasks:
        vals = [max(0.0, 1.0 - r["wer"]) if (m := headline_metric(r)) == "wer" else r[m] for r in tasks.values()]
        return sum(vals) / len(vals)
    for key in ("preference_accuracy", "reward_accuracy"):
        if key in result:
            return float(result[key])
    return None


def held_out_tiebreak(result: dict[str, Any]) -> float:
    """What decides between two equal task scores after DPO: held-out preference accuracy. A DPO that keeps
    the tasks but only learned its training pairs prefers the chosen reply on fewer held-out pairs than
    its starting model, and is not kept."""
    return float(result.get("preference_accuracy", 0.0)) if result.get("tasks") else 0.0

