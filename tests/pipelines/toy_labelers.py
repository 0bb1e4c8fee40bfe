"""Labelers the tests plug into the curate job by name (``labelers=[tests.pipelines.toy_labelers:…]``):
a real measurement of each segment's audio, so the label can be checked against the audio it came with."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from pipelines.stage import Resources, StageFn
from processors.audio import decode_flac
from schemas.labels import Caption, Quality
from schemas.segment import SegmentAudio


def zero_crossing_rate(x: np.ndarray) -> float:
    return float(np.mean(np.signbit(x[1:]) != np.signbit(x[:-1]))) if len(x) > 1 else 0.0


class ZeroCrossing(StageFn):
    """Captions each segment with its zero-crossing rate."""

    resources = Resources(num_cpus=0.5, actors=1, batch_size=4)
    version = "toy-zcr@1"

    def setup(self) -> None:
        self.calls = 0

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        self.calls += 1
        out = []
        for s in segments:
            x, _ = decode_flac(s.flac)
            caption = Caption(f"zcr {zero_crossing_rate(x):.5f}", self.version)
            out.append(dataclasses.replace(s, labels=s.labels.replace(caption=caption)))
        return out


class Snr(ZeroCrossing):
    """Rates each segment's quality by a crude SNR: the energy of its loudest tenth of 20 ms frames over
    that of its quietest tenth, in dB."""

    version = "toy-snr@1"

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        out = []
        for s in segments:
            x, _ = decode_flac(s.flac)
            energy = np.sort(np.square(x[: len(x) // 320 * 320].astype(np.float64)).reshape(-1, 320).mean(axis=1))
            k = max(1, len(energy) // 10)
            snr = round(float(10 * np.log10((energy[-k:].mean() + 1e-12) / (energy[:k].mean() + 1e-12))), 3)
            out.append(dataclasses.replace(s, labels=s.labels.replace(quality=Quality(self.version, snr_db=snr))))
        return out


class DiesOnce(ZeroCrossing):
    """Kills its own worker process on its first batch ever (a flag file beside the inputs remembers)."""

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        flag = os.path.join(os.path.dirname(segments[0].uri), ".labeler-died")
        if not os.path.exists(flag):
            open(flag, "w").close()
            os._exit(1)
        return super().__call__(segments)



class DropsLast(ZeroCrossing):
    """Loses the last segment of every batch: a labeler bug the pass must notice."""

    def __call__(self, segments: list[SegmentAudio]) -> list[SegmentAudio]:
        return super().__call__(segments)[:-1]
