"""Audio classification with any transformers checkpoint in a local directory: an AudioSet tagger (AST,
BEATs-style) for events, a speech emotion, age or gender classifier for paralinguistics.

    AudioClassifier(path, "label.events.model").top(clips, k=3) → [[("Dog", 0.91), ("Bark", 0.88), …], …]

Scores are sigmoids for a multi-label model (``problem_type`` in its config, or ``multi_label=True``) and a
softmax otherwise. Batches run in half precision on CUDA when there is a GPU.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from processors.labelers.models import ModelMissing

SR = 16000


@dataclasses.dataclass(frozen=True)
class EmotionParams:
    """Emotion and age of a speaker, each from a local transformers audio-classification checkpoint."""

    model: str = ""              # emotion classifier directory ("" → no emotion label)
    age_model: str = ""          # age (group) classifier directory ("" → no age label)
    min_score: float = 0.0       # below this the top class is not given
    batch_size: int = 8


def check_local(path: str, key: str) -> None:
    """A transformers checkpoint is a local folder with a config.json; anything else is a config error."""
    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelMissing(f"{key}: {path or '(empty)'} is not a local transformers checkpoint (a folder with "
                           "config.json); no such model ships in a package, so set a directory")


class AudioClassifier:
    def __init__(self, path: str, key: str, multi_label: bool | None = None, batch_size: int = 8,
                 device: str = "auto"):
        import torch
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        check_local(path, key)
        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForAudioClassification.from_pretrained(path, local_files_only=True, dtype=self.dtype)
        self.model.to(self.device).eval()
        cfg = self.model.config
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        self.multi = cfg.problem_type == "multi_label_classification" if multi_label is None else multi_label
        self.batch_size = batch_size
        self.by = f"{os.path.basename(os.path.normpath(path))}@transformers"

    def scores(self, clips: list[np.ndarray]) -> np.ndarray:
        """[clips, labels] scores."""
        torch = self.torch
        out = []
        for i in range(0, len(clips), self.batch_size):
            batch = [np.asarray(c, np.float32) for c in clips[i:i + self.batch_size]]
            inputs = self.extractor(batch, sampling_rate=SR, return_tensors="pt", padding=True)
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items()}
            with torch.no_grad():
                logits = self.model(**inputs).logits.float()
            probs = torch.sigmoid(logits) if self.multi else torch.softmax(logits, dim=-1)
            out.append(probs.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def top(self, clips: list[np.ndarray], k: int = 1, min_score: float = 0.0) -> list[list[tuple[str, float]]]:
        return [[(self.labels[j], round(float(row[j]), 4)) for j in np.argsort(-row)[:k] if row[j] >= min_score]
                for row in self.scores(clips)]
