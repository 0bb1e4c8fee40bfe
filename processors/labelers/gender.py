"""Voice gender with voice2gender: 20 acoustic features (pitch, spectral shape) and the XGBoost model the
package ships. Only a confident answer becomes a label.

    GenderClassifier().classify(x) → ("female", 0.97) or (None, 0.12)
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GenderParams:
    model: str = "voice2gender"
    min_confidence: float = 0.4      # |p(female) − 0.5| × 2 below this: no gender label


class GenderClassifier:
    def __init__(self, p: GenderParams = GenderParams()):
        import voice2gender
        from importlib.metadata import version

        self.predict = voice2gender.predict
        self.p = p
        self.by = f"voice2gender@{version('voice2gender')}"

    def classify(self, x: np.ndarray) -> tuple[str | None, float]:
        """(gender or None when unsure, confidence in [0, 1])."""
        from processors.audio import to_pcm16

        if len(x) < 16000 // 2:
            return None, 0.0
        try:
            r = self.predict([to_pcm16(x).tobytes()], 16000)
        except ValueError:            # no voiced frames to measure
            return None, 0.0
        confidence = float(r["confidence"])
        if confidence < self.p.min_confidence:
            return None, round(confidence, 3)
        return ("female" if r["female_probability"] >= 0.5 else "male"), round(confidence, 3)
