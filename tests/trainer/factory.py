"""Small example sets with checkable targets, made with TTS: which language is spoken (espeak-ng words in
four languages and several voices). Held-out words go to ``<stage>/eval``."""

from __future__ import annotations

import random
from pathlib import Path

from schemas.example import AudioRef, Example, assistant_turn, example_id, user_audio_turn
from tests.factories import tts
from trainer.data import write_examples

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
VOICE_VARIANTS = ["", "+m3", "+f2"]
PROMPT = "Detect the language:"
QUESTION = "Which language is spoken?"


def _clip(word: str, voice: str):
    x = tts(word, voice)
    return x[: 4 * 16000]


def build_language_id(root: Path, held_out: int = 4, seed: int = 0) -> dict[str, int]:
    """Write pretrain, sft and dpo shards (train + eval) under ``root``; return example counts."""
    rng = random.Random(seed)
    splits: dict[str, list] = {"train": [], "eval": []}
    for language, (code, words) in WORDS.items():
        for i, word in enumerate(words):
            split = "eval" if i >= len(words) - held_out else "train"
            for variant in VOICE_VARIANTS if split == "train" else VOICE_VARIANTS[:1]:
                splits[split].append((language, word, _clip(word, code + variant), variant))
    counts = {}
    for split, items in splits.items():
        rng.shuffle(items)
        per_stage: dict[str, list] = {"pretrain": [], "sft": [], "dpo": []}
        for language, word, audio, variant in items:
            seg = f"seg-{language[:2]}-{word}-{variant.strip('+') or 'x'}"
            ref = [AudioRef("audio0.flac", seg, round(len(audio) / 16000, 3))]
            wrong = rng.choice([lang for lang in WORDS if lang != language])
            per_stage["pretrain"].append((Example(
                id=example_id("pretrain", "lid", [seg], "lid.v1"), stage="pretrain", task="lid", audio=ref,
                prompt=PROMPT, target=language, template="lid.v1"), [audio]))
            per_stage["sft"].append((Example(
                id=example_id("sft", "lid", [seg], "lid-chat.v1"), stage="sft", task="lid", audio=ref,
                messages=[user_audio_turn(QUESTION), assistant_turn(language)], template="lid-chat.v1"), [audio]))
            per_stage["dpo"].append((Example(
                id=example_id("dpo", "lid", [seg], "lid-pref.v1"), stage="dpo", task="lid", audio=ref,
                messages=[user_audio_turn(QUESTION)], chosen=language, rejected=wrong,
                rejected_kind="wrong_label", template="lid-pref.v1"), [audio]))
        for stage, examples in per_stage.items():
            folder = root / stage / ("eval" if split == "eval" else "")
            write_examples(str(folder), examples, per_shard=40)
            counts[f"{stage}/{split}"] = len(examples)
    return counts
