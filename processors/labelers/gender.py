"""Voice gender with voice2gender: 20 acoustic features (pitch, spectral shape) and the XGBoost model the
package ships; or with a local transformers audio-classification checkpoint whose classes name a gender.
Only a confident answer becomes a label.

    GenderClassifier().classify(x) → ("female", 0.97) or (None, 0.12)
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GenderParams:
    model: str = "voice2gender"      # or a local transformers checkpoint directory
    min_confidence: float = 0.4      # |p(female) − 0.5| × 2 below this: no gender label


FEMALE = {"f", "female", "woman", "women", "w"}
MALE = {"m", "male", "man", "men"}


class GenderClassifier:
    def __init__(self, p: GenderParams = GenderParams()):
        self.p = p
        if p.model != "voice2gender":
            from processors.labelers.classify import AudioClassifier

            self.checkpoint = AudioClassifier(p.model, "label.gender.model", multi_label=False)
            unknown = [c for c in self.checkpoint.labels if c.lower() not in FEMALE | MALE]
            if unknown:
                from processors.labelers.models import ModelMissing

                raise ModelMissing(f"label.gender.model: {p.model} has classes that name no gender: {unknown}")
            self.by = self.checkpoint.by
            return
        import voice2gender
        from importlib.metadata import version

        self.checkpoint = None
        self.predict = voice2gender.predict
        self.by = f"voice2gender@{version('voice2gender')}"

    def classify(self, x: np.ndarray) -> tuple[str | None, float]:
        """(gender or None when unsure, confidence in [0, 1])."""
        from processors.audio import to_pcm16

        if len(x) < 16000 // 2:
            return None, 0.0
        if self.checkpoint is not None:
            scores = self.checkpoint.scores([x])[0]
            female = float(sum(v for c, v in zip(self.checkpoint.labels, scores) if c.lower() in FEMALE))
            r = {"female_probability": female, "confidence": abs(female - 0.5) * 2}
        else:
            try:
                r = self.predict([to_pcm16(x).tobytes()], 16000)
            except ValueError:            # no voiced frames to measure
                return None, 0.0
        confidence = float(r["confidence"])
        if confidence < self.p.min_confidence:
            return None, round(confidence, 3)
        return ("female" if r["female_probability"] >= 0.5 else "male"), round(confidence, 3)
