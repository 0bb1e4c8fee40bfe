"""Everything the builders make of one unit of work: the examples of a batch of labelled segments (pretrain
tasks, audio-analysis and compare conversations, mixed scenes, DPO pairs) or of a batch of instructions
(voice chat), each with the folder it goes to, and a reject for every (segment, task) that gave nothing.

    builder = Builder(BuildParams(), eval_sets=[…], policy=None, rewriter=None)
    out = builder.segments([(segment, flac_bytes, held_out), …])
    out.built    → [Built("pretrain", Example(...), [flac bytes]), Built("sft/eval", …), …]
    out.rejects  → [Reject("seg-…", "pretrain", "no_transcript", "asr: no transcript"), …]
    out.counts   → Counter({"caption_rewrite_kept": 3, …})

A segment contaminated by an eval set gives no example at all. Task weights drop a stable share of a
task's training examples (held-out ones are all kept). Every audio of every example is at most 30 s.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from processors.audio import decode_flac, encode_flac
from processors.builders import analysis, chat, pretrain
from processors.builders.mix import keep
from processors.builders.policy import event_vocabulary, rank, score_reply
from processors.builders.pretrain import stable_hash
from processors.decontaminate import EvalSet, contaminated
from schemas.example import AudioRef, Example, example_id, user_audio_turn
from schemas.reject import Reject
from schemas.segment import Segment

SR = 16000
MAX_S = 30.0
SCENE_KINDS = ("sound", "mixed")


@dataclasses.dataclass(frozen=True)
class SftParams:
    analysis_turns: int = 3
    compare: bool = True              # two-clip conversations over pairs of segments
    mixed_scene: float = 0.5          # share of scene segments (sound, mixed, or several speakers) mixed with a spoken question
    snr_db: list[float] = dataclasses.field(default_factory=lambda: [0.0, 5.0, 10.0])
    voice_chat: bool = True
    instructions: str = ""            # a JSONL instruction set; "" → the set shipped with audiomill
    voices: list[str] = dataclasses.field(default_factory=lambda: [
        "espeak:en-us@160", "espeak:en-us+f2@140", "espeak:en-gb+m3@180", "flite:slt@160", "flite:kal@150",
        "piper:joe@150"])


@dataclasses.dataclass(frozen=True)
class DpoParams:
    max_pairs: int = 2                # label-grounded pairs per segment
    policy_dir: str = ""              # a checkpoint audiomill train exported: sample candidates from it
    samples: int = 4
    margin: float = 0.3
    min_chosen: float = 0.5
    temperature: float = 1.0
    max_new_tokens: int = 40


@dataclasses.dataclass(frozen=True)
class MixParams:
    hours: dict[str, float] = dataclasses.field(default_factory=dict)          # kind → target hours; absent: all
    task_weights: dict[str, float] = dataclasses.field(default_factory=dict)   # task → share of it kept; absent: 1


@dataclasses.dataclass(frozen=True)
class CaptionParams:
    model: str = ""                   # a local causal LM folder that rewords captions
    max_new_tokens: int = 40


@dataclasses.dataclass(frozen=True)
class DecontaminateParams:
    eval_sets: list[str] = dataclasses.field(default_factory=list)   # folders or manifests of eval audio
    ngram: int = 8                    # transcript n-gram length that counts as shared text


@dataclasses.dataclass(frozen=True)
class BuildParams:
    tasks: list[str] = dataclasses.field(default_factory=lambda: list(pretrain.TASKS))
    min_dnsmos: float = 0.0           # speech below this DNSMOS overall gives no example
    mix: MixParams = MixParams()
    sft: SftParams = SftParams()
    dpo: DpoParams = DpoParams()
    caption: CaptionParams = CaptionParams()
    decontaminate: DecontaminateParams = DecontaminateParams()

    def problems(self) -> list[str]:
        out = [f"tasks: {t!r} is not one of {', '.join(pretrain.TASKS)}" for t in self.tasks
               if t not in pretrain.TASKS]
        known = set(pretrain.TASKS) | {"analysis", "compare", "voice_chat", "mixed_scene"}
        for task, w in self.mix.task_weights.items():
            if task not in known:
                out.append(f"mix.task_weights: unknown task {task!r}; known: {', '.join(sorted(known))}")
            elif isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
                out.append(f"mix.task_weights.{task}: {w!r} must be a share between 0 and 1")
        from processors.builders.mix import KINDS

        for kind, h in self.mix.hours.items():
            if kind not in KINDS:
                out.append(f"mix.hours: unknown kind {kind!r}; known: {', '.join(KINDS)}")
            elif isinstance(h, bool) or not isinstance(h, (int, float)) or h < 0:
                out.append(f"mix.hours.{kind}: {h!r} must be hours, 0 or more")
        for v in self.sft.voices:
            try:
                chat.parse_voice(v)
            except ValueError as e:
                out.append(f"sft.voices: {e}")
        if not 0 <= self.sft.mixed_scene <= 1:
            out.append(f"sft.mixed_scene: {self.sft.mixed_scene} must be a share between 0 and 1")
        if self.sft.analysis_turns < 1:
            out.append("sft.analysis_turns: must be at least 1")
        if self.sft.instructions:
            try:
                chat.load_instructions(self.sft.instructions)
            except (OSError, ValueError) as e:
                out.append(f"sft.instructions: {e}")
        d = self.dpo
        if d.samples < 2:
            out.append("dpo.samples: at least 2 replies are needed to rank")
        if not 0 <= d.margin <= 1 or not 0 <= d.min_chosen <= 1:
            out.append("dpo.margin and dpo.min_chosen are scores between 0 and 1")
        if d.temperature <= 0:
            out.append("dpo.temperature: must be above 0")
        if d.policy_dir:
            out += policy_problems(d.policy_dir)
        if self.caption.model:
            out += causal_lm_problems(self.caption.model)
        if self.decontaminate.ngram < 3:
            out.append("decontaminate.ngram: n-grams shorter than 3 words match ordinary speech")
        return out


def policy_problems(path: str) -> list[str]:
    import json
    import os

    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return [f"dpo.policy_dir: {path} holds no config.json; give the final/ folder of a stage that "
                "audiomill train exported"]
    try:
        kind = json.load(open(cfg)).get("model_type")
    except ValueError as e:
        return [f"dpo.policy_dir: {cfg} is not JSON ({e})"]
    missing = [f for f in ("processor_config.json", "tokenizer.json") if not os.path.isfile(os.path.join(path, f))]
    out = []
    if kind != "qwen2_audio":
        out.append(f"dpo.policy_dir: {path} holds a {kind!r} model, not a qwen2_audio one audiomill train exports")
    if missing:
        out.append(f"dpo.policy_dir: {path} lacks {', '.join(missing)} (the processor save_pretrained writes)")
    return out


def causal_lm_problems(path: str) -> list[str]:
    import os

    if not os.path.isfile(os.path.join(path, "config.json")):
        return [f"caption.model: {path} holds no config.json (a folder written by save_pretrained)"]
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return [f"caption.model: {path} holds no tokenizer"]
    return []


@dataclasses.dataclass(frozen=True)
class Built:
    folder: str                       # "pretrain", "sft/eval", …
    example: Example
    audio: list[bytes]                # FLAC bytes, one per ``example.audio``


@dataclasses.dataclass
class UnitOutput:
    built: list[Built] = dataclasses.field(default_factory=list)
    rejects: list[Reject] = dataclasses.field(default_factory=list)
    counts: Counter = dataclasses.field(default_factory=Counter)


def reason_code(reason: str) -> str:
    return reason.replace(" ", "_")


class Builder:
    def __init__(self, params: BuildParams, eval_sets: list[EvalSet] = (), policy=None, rewriter=None):
        self.p = params
        self.eval_sets = list(eval_sets)
        self.policy = policy
        self.rewriter = rewriter
        self.templates = pretrain.load_templates()
        self.voices = [chat.parse_voice(v) for v in params.sft.voices]
        self.instructions = chat.load_instructions(params.sft.instructions or chat.INSTRUCTIONS)

    # ---- the pieces every example goes through --------------------------------------------------------

    def _add(self, out: UnitOutput, ex: Example, audio: list[bytes], durations: list[float], held: bool) -> None:
        """Keep ``ex`` unless an audio runs past 30 s or its task's weight drops it."""
        if any(d > MAX_S + 1e-6 for d in durations):
            out.rejects.append(Reject(",".join(a.segment_id for a in ex.audio), ex.stage, "too_long",
                                      f"{ex.task}: an audio of {max(durations):.1f} s (at most {MAX_S:.0f} s)"))
            return
        if not held and not keep(ex.id, self.p.mix.task_weights.get(ex.task, 1.0)):
            out.rejects.append(Reject(",".join(a.segment_id for a in ex.audio) or ex.id, ex.stage, "task_weight",
                                      f"{ex.task}: not drawn at task_weights.{ex.task}={self.p.mix.task_weights[ex.task]}"))
            return
        out.built.append(Built(ex.stage + ("/eval" if held else ""), ex, audio))

    # ---- segments ----------------------------------------------------------------------------------

    def segments(self, items: list[tuple[Segment, bytes, bool]]) -> UnitOutput:
        out = UnitOutput()
        flacs, decoded = {seg.id: flac for seg, flac, _ in items}, {}

        def pcm(key: str) -> np.ndarray:
            """A segment's samples, decoded once and only when an eval set, a scene or the policy needs them."""
            if key not in decoded:
                decoded[key] = decode_flac(flacs[key])[0]
            return decoded[key]

        dirty = contaminated([(seg.id, pcm(seg.id), seg.labels.transcript.text if seg.labels.transcript else "")
                              for seg, _, _ in items], self.eval_sets, ngram=self.p.decontaminate.ngram
                             ) if self.eval_sets else {}
        usable = []
        for seg, flac, held in items:
            if seg.id in dirty:
                name, how = dirty[seg.id]
                out.rejects.append(Reject(seg.id, "build", "contaminated", f"{how} of eval set {name}"))
                out.counts[f"contaminated/{name}/{how}"] += 1
                continue
            q = seg.labels.quality
            if (self.p.min_dnsmos and seg.kind == "speech" and q is not None and q.dnsmos_ovrl is not None
                    and q.dnsmos_ovrl < self.p.min_dnsmos):
                out.rejects.append(Reject(seg.id, "build", "below_min_dnsmos",
                                          f"DNSMOS {q.dnsmos_ovrl:.2f} < {self.p.min_dnsmos}"))
                continue
            usable.append((seg, flac, held))
            self._one_segment(out, seg, flac, pcm, held)
        self._pairs(out, usable, pcm)
        return out

    def _one_segment(self, out: UnitOutput, seg: Segment, flac: bytes, pcm: Callable[[str], np.ndarray],
                     held: bool) -> None:
        d = [seg.duration_s]
        examples, missing = pretrain.pretrain_examples(seg, self.templates, tuple(self.p.tasks))
        for task, reason in missing:
            out.rejects.append(Reject(seg.id, "pretrain", reason_code(reason), f"{task}: {reason}"))
        for ex in examples:
            if ex.task == "caption" and self.rewriter is not None:
                text, reworded = self.rewriter.rewrite(ex.target, seg.labels)
                out.counts["caption_rewrite_kept" if reworded else "caption_rewrite_rejected"] += 1
                ex = dataclasses.replace(ex, target=text, provenance={
                    **ex.provenance, "caption_by": self.rewriter.path if reworded else "labels",
                    **({"composed": ex.target} if reworded else {})})
            self._add(out, ex, [flac], d, held)
        conv = analysis.conversation(seg, self.p.sft.analysis_turns)
        if conv is None:
            out.rejects.append(Reject(seg.id, "sft", "no_labels", "analysis: no topic its labels answer"))
        else:
            self._add(out, conv, [flac], d, held)
        pairs = analysis.dpo_pairs(seg, self.p.dpo.max_pairs)
        if not pairs:
            out.rejects.append(Reject(seg.id, "dpo", "no_negative", "analysis: no labelled fact to change"))
        for ex in pairs:
            self._add(out, ex, [flac], d, held)
        if self.policy is not None:
            self._sampled(out, seg, flac, pcm(seg.id), held)
        self._scene(out, seg, pcm, held)

    def _scene(self, out: UnitOutput, seg: Segment, pcm: Callable[[str], np.ndarray], held: bool) -> None:
        several = seg.labels.speakers is not None and seg.labels.speakers.count > 1
        if not (seg.kind in SCENE_KINDS or several) or not self.p.sft.mixed_scene:
            return
        if stable_hash(f"scene/{seg.id}") / 2**64 >= self.p.sft.mixed_scene:
            return
        voice = chat.voice_for({"id": seg.id, "language": "en"}, self.voices)
        snr = pretrain.choose(self.p.sft.snr_db, f"snr/{seg.id}")
        made = chat.mixed_scene(seg, pcm(seg.id), voice, snr)
        if made is None:
            out.rejects.append(Reject(seg.id, "sft", "no_labels", "mixed_scene: no scene topic its labels answer"))
            return
        ex, (mixed,) = made
        self._add(out, ex, [encode_flac(mixed)], [len(mixed) / SR], held)

    def _pairs(self, out: UnitOutput, usable: list[tuple[Segment, bytes, bool]], pcm: Callable[[str], np.ndarray]
               ) -> None:
        """Over segments on the same side of the split: compare conversations and wrong-clip pairs of
        neighbours, and layered scenes of a sound-event segment with a multi-speaker one."""
        for held in (False, True):
            side = sorted(((s, f) for s, f, h in usable if h == held), key=lambda sf: sf[0].id)
            if self.p.sft.compare:
                for (a, fa), (b, fb) in zip(side[0::2], side[1::2]):
                    d = [a.duration_s, b.duration_s]
                    for ex in (analysis.compare(a, b), analysis.wrong_clip_pair(a, b)):
                        if ex is not None:
                            self._add(out, ex, [fa, fb], d, held)
            sounds = [s for s, _ in side if s.kind == "sound" and s.labels.events]
            talks = [s for s, _ in side if s.labels.speakers is not None and s.labels.speakers.count > 1]
            for sound, talk in zip(sounds, talks):
                if stable_hash(f"layered/{sound.id}/{talk.id}") / 2**64 >= self.p.sft.mixed_scene:
                    continue
                voice = chat.voice_for({"id": f"{sound.id}+{talk.id}", "language": "en"}, self.voices)
                snr = pretrain.choose(self.p.sft.snr_db, f"snr/{sound.id}/{talk.id}")
                made = chat.layered_scene(sound, pcm(sound.id), talk, pcm(talk.id), voice, snr)
                if made is not None:
                    ex, (mixed,) = made
                    self._add(out, ex, [encode_flac(mixed)], [len(mixed) / SR], held)

    def _sampled(self, out: UnitOutput, seg: Segment, flac: bytes, audio: np.ndarray, held: bool) -> None:
        """Replies sampled from the policy to one analysis question, ranked by the labels."""
        topics = [t for t in analysis.TOPICS if analysis.answer(t, seg.labels)]
        if not topics:
            return
        topic = pretrain.choose(topics, f"{seg.id}/sampled")
        q = pretrain.choose(analysis.load_questions()[topic], f"{seg.id}/sampled/{topic}")
        prompt = Example(id="prompt", stage="sft", task="analysis", audio=[AudioRef("audio0.flac", seg.id, seg.duration_s)],
                         messages=[user_audio_turn(q.text)])
        d = self.p.dpo
        replies = self.policy.sample(prompt, [audio], d.samples, d.temperature, d.max_new_tokens,
                                     seed=stable_hash(f"sample/{seg.id}") % 2**31)
        vocab = event_vocabulary(seg.labels) if topic == "events" else None
        scored = [(score_reply(topic, r, seg.labels, vocab), r) for r in replies]
        out.counts["sampled_replies"] += len(replies)
        got = rank(scored, d.margin, d.min_chosen)
        if isinstance(got, str):
            out.rejects.append(Reject(seg.id, "dpo", got, f"sampled {topic}: scores "
                                      + ", ".join(f"{s:.2f}" for s, _ in scored)))
            return
        (sc, chosen), (sr, rejected) = got
        label = analysis.answer(topic, seg.labels)[1]
        ex = Example(id=example_id("dpo", "analysis", [seg.id], q.id, salt="sampled"), stage="dpo", task="analysis",
                     audio=prompt.audio, template=q.id, messages=prompt.messages, chosen=chosen, rejected=rejected,
                     rejected_kind="sampled", score={"chosen": round(sc, 4), "rejected": round(sr, 4),
                                                    "by": f"{topic} scorer", "policy": self.policy.path,
                                                    "samples": len(replies)},
                     provenance={"segments": [seg.id], "labels_used": [label],
                                 "license": [seg.source.license] if seg.source.license else []})
        self._add(out, ex, [flac], [seg.duration_s], held)

    # ---- instructions -----------------------------------------------------------------------------

    def voice_chat(self, items: list[tuple[dict[str, Any], bool]]) -> UnitOutput:
        """Spoken instructions, each with its answer (SFT) and with another's answer as a rejected reply (DPO)."""
        out = UnitOutput()
        everyone = self.instructions
        for item, held in items:
            voice = chat.voice_for(item, self.voices)
            made = chat.voice_chat(item, voice)
            if made is None:
                out.rejects.append(Reject(item["id"], "sft", "too_long", "voice_chat: the spoken instruction runs past 30 s"))
                continue
            ex, (audio,) = made
            flac = encode_flac(audio)
            self._add(out, ex, [flac], [len(audio) / SR], held)
            others = [o for o in everyone if o["id"] != item["id"] and o["answer"] != item["answer"]]
            if others:
                other = pretrain.choose(others, f"ignored/{item['id']}")
                self._add(out, chat.ignored_instruction_pair(item, other, voice, audio), [flac], [len(audio) / SR], held)
        return out
