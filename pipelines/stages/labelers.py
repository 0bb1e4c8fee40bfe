"""The built-in labeler stages: Ray adapters around ``processors/labelers``. Each is a ``StageFn`` whose
``setup`` loads its model once per actor and whose ``__call__`` labels a batch of ``SegmentAudio``;
``config_key`` names its settings in the ``label`` config section."""

from __future__ import annotations

import dataclasses

from pipelines.stage import Resources, StageFn
from processors.audio import decode_flac
from processors.labelers.asr import AsrParams, Whisper, disagreement
from schemas.labels import Transcript
from schemas.segment import SegmentAudio


@dataclasses.dataclass(frozen=True)
class LabelParams:
    """Settings of the labelers (config section ``label``)."""

    models_dir: str = ""                 # where packaged models are unpacked; "" → ~/.cache/audiomill/models
    gpu_fraction: float = 0.25           # of a GPU per labeler actor, when the cluster has GPUs
    asr: AsrParams = AsrParams()


class AsrLabeler(StageFn):
    """Transcript and spoken language of speech (and mixed) segments. A manifest transcript stays; the
    hypothesis and the disagreement go beside it, and its language is filled in when it had none."""

    config_key = "asr"
    requires = (("faster_whisper", "faster-whisper"), ("ctranslate2", "ctranslate2"))
    resources = Resources(num_cpus=1, actors=-1, batch_size=8)
    kinds = ("speech", "mixed")

    def setup(self) -> None:
        p: LabelParams = self.params
        self.model = Whisper(p.asr, p.models_dir)

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        todo = [i for i, s in enumerate(segments) if s.kind in self.kinds]
        results = self.model.transcribe([decode_flac(segments[i].flac)[0] for i in todo])
        out = list(segments)
        for i, r in zip(todo, results):
            s = segments[i]
            have = s.labels.transcript
            if not r.text and have is None:
                continue                    # nothing recognised: no transcript rather than an empty one
            if have is not None and have.by == "manifest":
                t = dataclasses.replace(have, hypothesis=r.text, disagreement=disagreement(have.text, r.text),
                                        language=have.language or r.language, language_prob=r.language_prob)
            else:
                t = Transcript(text=r.text, by=self.model.by, language=r.language, language_prob=r.language_prob)
            out[i] = dataclasses.replace(s, labels=s.labels.replace(transcript=t))
        return out
