"""A checkpoint fine-tuned here, served as such checkpoints are served: does it answer?

    python bench/served_format.py [--max-steps 600] [--runs template,old,lora] [--keep DIR] [key=value ...]

A random checkpoint of Qwen2-Audio-7B-Instruct's architecture at a tiny size, with the Instruct chat template
(``trainer.model.stand_in_checkpoint``), goes through ``audiomill train-all model_dir=…`` on spoken-language
ID (espeak-ng words in four languages, chance 0.25; the last ``--held-out`` words of each language are never
trained on). Each run's handed-on DPO checkpoint is then asked about every unseen word through plain
transformers: ``apply_chat_template`` of the checkpoint's processor, the processor's audio expansion, greedy
``generate``. Runs:

- ``template``: examples rendered by the checkpoint's own chat template (the trainer's default);
- ``old``: the trainer's former rendering (``trainer.model.CHAT_TEMPLATE``: ChatML with no system turn and no
  "Audio 1:" label), given as ``chat_template=FILE``; also asked in that format, to tell a model that did not
  learn from one asked in a format it was not trained on;
- ``lora``: SFT (``lr=2e-3``) and DPO with ``lora_r=16`` on each stage's default parts (``audiomill train``, one
  stage each), starting from the ``template`` run's pretrained checkpoint (that run trains first if it has
  not): adapters adapt a model that already knows something, as they do a released checkpoint.

The stand-in's weights are random, so every run trains encoder, projector and LM in every stage
(``train_modules``); a released checkpoint would start from what it knows. Its audio window is ``--window``
seconds (4 by default, 30 as released): every clip costs a whole window, and two CPU cores train a 30 s window
about 7 times slower; the prompt format, which this measures, does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.train_defaults import add_data_args, language_id_data  # noqa: E402

RUNS = {"template": [], "old": ["chat_template={old}"]}


def served_accuracy(checkpoint: str, served_by: str, unseen: Path) -> tuple[float, int]:
    """Share of the unseen words whose language the checkpoint names, asked through ``served_by``'s
    processor (its chat template) with plain transformers."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    from trainer.data import read_all
    from trainer.layout import stage_shards

    processor = Qwen2AudioProcessor.from_pretrained(served_by)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint).eval()
    right = n = 0
    for ex, audios in read_all(stage_shards(str(unseen), "sft", held_out=True)):
        text = processor.apply_chat_template(ex.messages[:-1], add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], audio=audios, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        reply = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        answer = "".join(c["text"] for c in ex.messages[-1]["content"] if c["type"] == "text")
        right += reply.strip().lower().rstrip(".") == answer.strip().lower()
        n += 1
    return right / n, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(ap)
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--runs", default="template,old,lora")
    ap.add_argument("--window", type=int, default=4,
                    help="the stand-in's audio window in seconds (30 as released; every clip costs a whole window)")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    ap.add_argument("overrides", nargs="*", help="key=value for train-all")
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from trainer.checkpoints import stage_checkpoint
    from trainer.layout import corpus_texts
    from trainer.model import CHAT_TEMPLATE, stand_in_checkpoint

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        (ex, unseen), base = language_id_data(root, args), root / "base"
        if not (base / "config.json").exists():
            stand_in_checkpoint(str(base), list(corpus_texts(str(ex))), chunk_s=args.window)
        old = root / "old_template.jinja"
        old.write_text(CHAT_TEMPLATE)
        results = {}
        runs = args.runs.split(",")
        if "lora" in runs and "template" not in runs:
            runs.insert(runs.index("lora"), "template")
        for run in runs:
            out = root / f"train-{run}"
            # The random stand-in learns everything in full runs; adapters train each stage's default parts.
            common = [f"max_steps={args.max_steps}", *([] if run == "lora" else ["train_modules=[encoder,projector,lm]"]),
                      *args.overrides]
            t0 = time.monotonic()
            if run == "lora":      # one stage at a time: each starts from the checkpoint the one before hands on
                steps = [("sft", lambda: stage_checkpoint(str(root / "train-template"), "pretrain")),
                         ("dpo", lambda: stage_checkpoint(str(out), "sft"))]
            else:
                steps = [("all", lambda: str(base))]
            for stage, start in steps:
                if (out / ("dpo" if stage == "all" else stage) / "eval.json").exists():
                    continue
                extra = [a.format(old=old) for a in RUNS.get(run, [])]
                if run == "lora":   # adapters learn at a higher rate than full fine-tuning (SFT; DPO keeps its own)
                    extra += ["lora_r=16"] + (["lr=2e-3"] if stage == "sft" else [])
                cmd = (["train-all", str(ex), str(out)] if stage == "all" else
                       ["train", str(ex), str(out), f"stage={stage}"]) + [f"model_dir={start()}", *extra, *common]
                print("[bench] audiomill " + " ".join(cmd), flush=True)
                subprocess.run([sys.executable, "-m", "pipelines.cli", *cmd], check=True,
                               cwd=Path(__file__).resolve().parent.parent)
            seconds = time.monotonic() - t0
            row = {"seconds": round(seconds)}
            for stage in ("sft", "dpo"):
                ckpt = stage_checkpoint(str(out), stage)
                row[f"{stage}_served"], row["n"] = served_accuracy(ckpt, str(base), unseen)
                if run == "old":
                    row[f"{stage}_own_format"] = served_accuracy(ckpt, ckpt, unseen)[0]
            results[run] = row
            print(f"[bench] {run}: {json.dumps(row)}", flush=True)
        print("\nspoken-language ID on unseen words (chance 0.25), asked through the checkpoint's Instruct "
              "template in plain transformers")
        print(f"{'run':10s} {'SFT':>6s} {'DPO':>6s} {'n':>4s}  (old: asked in its own format: SFT, DPO)")
        for run, r in results.items():
            own = f"  {r['sft_own_format']:.3f} {r['dpo_own_format']:.3f}" if "sft_own_format" in r else ""
            print(f"{run:10s} {r['sft_served']:6.3f} {r['dpo_served']:6.3f} {r['n']:4d}{own}")
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raise SystemExit(main())
