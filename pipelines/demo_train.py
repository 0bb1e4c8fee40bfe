"""The training demo: spoken-language ID learned from raw TTS audio, pretrain → SFT → DPO on Ray Train.

    python -m pipelines.demo_train OUTPUT_DIR [--scale S] [--launcher ray|local]

Builds an example set whose answers are checkable (which of four languages a single espeak-ng word is
spoken in, several voices per language; held-out words in ``<stage>/eval``), trains the ``tiny`` preset
through all three stages on CPU, prints held-out accuracy against chance and DPO reward accuracy, then
loads the final export with plain transformers and asks it about a held-out word.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from processors.tts import espeak
from schemas.example import AudioRef, Example, assistant_turn, example_id, user_audio_turn
from processors.builders.writer import write_examples

WORDS = {
    "english": ("en", ["house", "water", "garden", "morning", "window", "yellow", "summer", "teacher", "river",
                       "bread", "mountain", "kitchen", "friend", "evening", "animal", "letter", "winter", "doctor"]),
    "french": ("fr", ["maison", "fromage", "jardin", "matin", "fenêtre", "soleil", "voiture", "bonjour", "rivière",
                      "boulanger", "montagne", "cuisine", "ami", "soirée", "château", "lettre", "hiver", "médecin"]),
    "german": ("de", ["Haus", "Wasser", "Garten", "Morgen", "Fenster", "Zeitung", "Sommer", "Lehrer", "Fluss",
                      "Brot", "Berg", "Küche", "Freund", "Abend", "Tier", "Brief", "Winter", "Schule"]),
    "spanish": ("es", ["casa", "agua", "jardín", "mañana", "ventana", "amarillo", "verano", "maestro", "río",
                       "pan", "montaña", "cocina", "amigo", "noche", "animal", "carta", "invierno", "médico"]),
}
# More words of each language, after ``WORDS``: data for measuring what a model learned of the language
# alone, on many words never seen in training (``build_language_id(..., words=80)``).
MORE_WORDS = {
    "english": """table chair pencil candle basket button ladder pocket blanket bottle carpet forest island valley
        ocean meadow thunder lightning rainbow shadow silver copper marble feather pillow kettle hammer needle
        orange cherry lemon butter cheese honey pepper carrot potato onion tomato sugar coffee village castle
        bridge tower market harbor station ticket journey holiday sister brother mother father daughter
        neighbor captain soldier farmer singer rabbit""".split(),
    "french": """table chaise crayon bougie panier bouton échelle poche couverture bouteille tapis forêt île vallée
        océan prairie tonnerre éclair arc ombre argent cuivre marbre plume oreiller bouilloire marteau aiguille
        orange cerise citron beurre miel poivre carotte pomme oignon tomate sucre café village pont tour marché
        port gare billet voyage vacances sœur frère mère père fille voisin capitaine soldat fermier chanteur
        grenouille papillon lapin""".split(),
    "german": """Tisch Stuhl Bleistift Kerze Korb Knopf Leiter Tasche Decke Flasche Teppich Wald Insel Tal Ozean
        Wiese Donner Blitz Regenbogen Schatten Silber Kupfer Marmor Feder Kissen Kessel Hammer Nadel Kirsche
        Zitrone Butter Käse Honig Pfeffer Karotte Kartoffel Zwiebel Tomate Zucker Kaffee Dorf Burg Brücke Turm
        Markt Hafen Bahnhof Fahrkarte Reise Urlaub Schwester Bruder Mutter Vater Tochter Nachbar Kapitän
        Soldat Bauer Sänger Frosch Schmetterling""".split(),
    "spanish": """mesa silla lápiz vela cesta botón escalera bolsillo manta botella alfombra bosque isla valle
        océano pradera trueno relámpago arcoíris sombra plata cobre mármol pluma almohada tetera martillo aguja
        naranja cereza limón mantequilla queso miel pimienta zanahoria patata cebolla tomate azúcar café pueblo
        castillo puente torre mercado puerto estación billete viaje vacaciones hermana hermano madre padre hija
        vecino capitán soldado granjero cantante conejo""".split(),
}
VOICE_VARIANTS = ["", "+m3", "+f2", "+f4"]    # the demo speaks each word in the first three
PROMPT = "Detect the language:"
QUESTION = "Which language is spoken?"


def _clip(word: str, voice: str):
    x = espeak(word, voice)
    return x[: 4 * 16000]


def vocabulary(language: str, words: int) -> list[str]:
    """The first ``words`` words of ``language`` (``WORDS``, then ``MORE_WORDS``)."""
    found = WORDS[language][1] + MORE_WORDS[language]
    if words > len(found):
        raise ValueError(f"{language} has {len(found)} words, not {words}")
    return found[:words]


def build_language_id(root: Path, held_out: int = 4, seed: int = 0, words: int = 18, voices: int = 3,
                      held_out_voices: int = 1, held_out_root: Path | None = None) -> dict[str, int]:
    """Write pretrain, sft and dpo shards under ``root``; return example counts. Of each language's ``words``
    words, the last ``held_out`` are never trained on: spoken by ``held_out_voices`` voices they form the
    held-out set, in ``<stage>/eval`` or, with ``held_out_root``, as that folder's ``<stage>/eval`` (``root``
    then has no held-out set of its own). The others are spoken by ``voices`` voice variants each. Every
    example names its word as the transcript of its audio."""
    rng = random.Random(seed)
    splits: dict[str, list] = {"train": [], "eval": []}
    for language, (code, _) in WORDS.items():
        vocab = vocabulary(language, words)
        for i, word in enumerate(vocab):
            split = "eval" if i >= len(vocab) - held_out else "train"
            for variant in VOICE_VARIANTS[:voices if split == "train" else held_out_voices]:
                splits[split].append((language, word, _clip(word, code + variant), variant))
    counts, folders = {}, {"train": {}, "eval": {}}
    for split, items in splits.items():
        rng.shuffle(items)
        per_stage: dict[str, list] = {"pretrain": [], "sft": [], "dpo": []}
        for language, word, audio, variant in items:
            seg = f"seg-{language[:2]}-{word}-{variant.strip('+') or 'x'}"
            ref = [AudioRef("audio0.flac", seg, round(len(audio) / 16000, 3))]
            provenance = {"segments": [seg], "transcript": word}
            wrong = rng.choice([lang for lang in WORDS if lang != language])
            per_stage["pretrain"].append((Example(
                id=example_id("pretrain", "lid", [seg], "lid.v1"), stage="pretrain", task="lid", audio=ref,
                prompt=PROMPT, target=language, template="lid.v1", provenance=provenance), [audio]))
            per_stage["sft"].append((Example(
                id=example_id("sft", "lid", [seg], "lid-chat.v1"), stage="sft", task="lid", audio=ref,
                messages=[user_audio_turn(QUESTION), assistant_turn(language)], template="lid-chat.v1",
                provenance=provenance), [audio]))
            per_stage["dpo"].append((Example(
                id=example_id("dpo", "lid", [seg], "lid-pref.v1"), stage="dpo", task="lid", audio=ref,
                messages=[user_audio_turn(QUESTION)], chosen=language, rejected=wrong,
                rejected_kind="wrong_label", template="lid-pref.v1", provenance=provenance), [audio]))
        for stage, examples in per_stage.items():
            folders[split][stage + ("/eval" if split == "eval" else "")] = examples
            counts[f"{stage}/{split}"] = len(examples)
    config = f"demo-lid-{seed}-{held_out}-{words}-{voices}-{held_out_voices}"
    if held_out_root is None:
        write_examples(str(root), {**folders["train"], **folders["eval"]}, name="audiomill-demo-lid",
                       config_hash=config, per_shard=40)
    else:
        write_examples(str(root), folders["train"], name="audiomill-demo-lid", config_hash=config, per_shard=40)
        write_examples(str(held_out_root), folders["eval"], name="audiomill-demo-lid-held-out",
                       config_hash=config, per_shard=40)
    return counts


def answer(final: Path, audio, question: str = QUESTION) -> str:
    """Ask the exported model about ``audio`` with nothing but transformers."""
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    processor = Qwen2AudioProcessor.from_pretrained(str(final))
    model = Qwen2AudioForConditionalGeneration.from_pretrained(str(final))
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": 0}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], audio=[audio], sampling_rate=16000, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


STEPS = {"pretrain": 500, "sft": 150, "dpo": 60}


def train(examples: Path, out: Path, launcher: str = "ray", scale: float = 1.0) -> dict[str, dict]:
    """pretrain → SFT → DPO of the ``tiny`` preset on the example set; each stage's ``eval.json`` content."""
    from trainer.config import TrainConfig
    from trainer.launch import run_all

    steps = {stage: max(1, round(n * scale)) for stage, n in STEPS.items()}
    return run_all(TrainConfig(examples=str(examples), output=str(out), launcher=launcher, max_tokens=2000,
                               stage_steps=steps))


def main(argv: list[str] | None = None) -> int:
    from trainer.checkpoints import stage_checkpoint

    ap = argparse.ArgumentParser(prog="python -m pipelines.demo_train", description=__doc__.split("\n\n")[0])
    ap.add_argument("output", type=Path)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the steps of every stage")
    ap.add_argument("--launcher", choices=("ray", "local"), default="ray")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    examples = args.output / "examples"
    if not (examples / "manifest.json").exists():
        counts = build_language_id(examples)
        print(f"[demo] example set: {json.dumps(counts)}", flush=True)
    out = args.output / "train"
    results = train(examples, out, args.launcher, args.scale)
    word = WORDS["french"][1][-1]                      # held out of training
    reply = answer(Path(stage_checkpoint(str(out), "dpo")), espeak(word, "fr"))
    print("\n[demo] spoken-language ID on held-out words (4 languages, espeak-ng voices)")
    print(f"{'stage':9s} {'steps':>5s}  {'held-out metric':28s} {'value':>6s} {'chance':>6s}")
    for stage in ("pretrain", "sft"):
        lid = results[stage]["eval"]["tasks"]["lid"]
        print(f"{stage:9s} {results[stage]['steps']:5d}  {'accuracy (' + str(lid['n']) + ' words)':28s} "
              f"{lid['accuracy']:6.3f} {lid['chance']:6.3f}")
    dpo = results["dpo"]["eval"]
    print(f"{'dpo':9s} {results['dpo']['steps']:5d}  {'reward accuracy':28s} {dpo['reward_accuracy']:6.3f} {0.5:6.3f}")
    print(f"{'':9s} {'':5s}  {'chosen − rejected log-p shift':28s} {dpo['chosen_minus_rejected_logp_shift']:+6.3f}")
    if "tasks" in dpo:
        after, before = dpo["tasks"]["lid"], dpo["tasks_before"]["lid"]
        print(f"{'':9s} {'':5s}  {'accuracy after DPO (SFT)':28s} {after['accuracy']:6.3f} {after['chance']:6.3f}"
              f"  ({before['accuracy']:.3f} before DPO)")
    print(f"[demo] plain transformers, held-out French word {word!r}: {QUESTION!r} → {reply!r} (expected 'french')")
    print(f"[demo] exports in {out}/<stage>/ (best/, else final/); {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
