"""Who speaks when, with speaker ids consistent across every segment of one source recording.

All segments of one source are diarized together: speech windows (1.5 s every 0.75 s, where silero-vad hears
speech) are embedded with resemblyzer's speaker encoder and clustered with scikit-learn's agglomerative
clustering (cosine, average linkage, stopped at ``threshold``). A long recording's windows are clustered on
an evenly spaced subset and the rest go to the nearest cluster. Speakers are numbered S0, S1, … in order of
first appearance in the recording, so S0 is the same voice in every segment cut from it. Each segment gets
its speaker count, its turns (seconds from the segment's start) and the mean embedding of its main speaker.

    Diarizer(SpeakerParams()).diarize([(key, start_s, audio), …]) → {key: Speakers(count=2, turns=…), …}

With ``model`` set to a local folder, a pyannote.audio speaker-diarization pipeline (its config.yaml and the
models it names) does the same job (``PyannoteDiarizer``): the source's kept segments are laid back at their
times on one timeline (silence between them), diarized once, and the turns cut back to each segment.
pyannote loads its model checkpoints as pickles (lightning's format), so name only a folder you trust.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from schemas.labels import SpeakerTurn, Speakers

SR = 16000


@dataclasses.dataclass(frozen=True)
class SpeakerParams:
    model: str = "resemblyzer"       # or a local pyannote.audio pipeline folder (config.yaml)
    window_s: float = 1.5
    hop_s: float = 0.75
    threshold: float = 0.3           # cosine distance at which clusters stop merging
    max_windows: int = 2000          # clustered directly; more are assigned to the nearest cluster
    min_cluster_windows: int = 3     # smaller clusters join the nearest larger one
    min_speech: float = 0.5          # share of a window that must be speech


class Diarizer:
    def __init__(self, p: SpeakerParams = SpeakerParams()):
        from importlib.metadata import version

        from processors.numba_cache import safe_librosa
        from processors.vad import SileroVad

        safe_librosa()                       # resemblyzer imports librosa
        from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder("cpu", verbose=False)
        self.vad = SileroVad()
        self.p = p
        self.by = f"resemblyzer@{version('resemblyzer')}+agglomerative"

    def windows(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts in samples, [n, 256] embeddings) of the speech windows of one segment."""
        from processors.vad import FRAME

        win, hop = int(self.p.window_s * SR), int(self.p.hop_s * SR)
        n = len(x)
        if n < win:            # a short segment is one window, padded; its speech share counts over its own length
            x = np.pad(x, (0, win - n))
        speech = np.repeat(self.vad.probs(x) >= 0.5, FRAME)[: len(x)]
        starts = [s for s in range(0, len(x) - win + 1, hop) if speech[s:s + min(win, n)].mean() >= self.p.min_speech]
        if not starts:
            return np.zeros(0, int), np.zeros((0, 256), np.float32)
        from resemblyzer.audio import wav_to_mel_spectrogram

        mels = np.stack([wav_to_mel_spectrogram(x[s:s + win]) for s in starts])
        import torch

        with torch.no_grad():
            emb = self.encoder(torch.from_numpy(mels).to(self.encoder.device)).cpu().numpy()
        return np.array(starts), emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def diarize(self, segments: list[tuple[str, float, np.ndarray]]) -> dict[str, Speakers]:
        """``segments``: (key, start_s in the recording, audio) of one source recording, any order."""
        per = [(key, start, x, *self.windows(x)) for key, start, x in sorted(segments, key=lambda s: s[1])]
        emb = np.concatenate([w[4] for w in per]) if per else np.zeros((0, 256), np.float32)
        labels = self._cluster(emb)
        out, i = {}, 0
        for key, _, x, starts, e in per:
            mine = labels[i:i + len(starts)]
            i += len(starts)
            if len(mine) == 0:
                continue
            out[key] = self._speakers(mine, starts, e, len(x))
        return out

    def _cluster(self, emb: np.ndarray) -> np.ndarray:
        """Cluster ids numbered by first appearance."""
        if len(emb) == 0:
            return np.zeros(0, int)
        if len(emb) == 1:
            return np.zeros(1, int)
        from sklearn.cluster import AgglomerativeClustering

        pick = np.linspace(0, len(emb) - 1, min(len(emb), self.p.max_windows)).round().astype(int)
        model = AgglomerativeClustering(n_clusters=None, distance_threshold=self.p.threshold, metric="cosine",
                                        linkage="average")
        sub = model.fit_predict(emb[pick])
        sizes = np.bincount(sub)
        # A cluster of a window or two (or under 5% of them) is a stray, not a speaker: it joins the nearest.
        big = [c for c in range(len(sizes)) if sizes[c] >= max(self.p.min_cluster_windows, 0.05 * len(pick))]
        big = big or [int(sizes.argmax())]
        centroids = np.stack([emb[pick][sub == c].mean(axis=0) for c in big])
        raw = np.argmax(emb @ centroids.T, axis=1)
        order = {c: n for n, c in enumerate(dict.fromkeys(raw.tolist()))}
        return np.array([order[c] for c in raw])

    def _speakers(self, ids: np.ndarray, starts: np.ndarray, emb: np.ndarray, n: int) -> Speakers:
        """Turns: runs of windows of one speaker, cut halfway between windows of different speakers."""
        win = self.p.window_s
        turns = []
        run_start, current = starts[0] / SR, ids[0]
        for k in range(1, len(ids)):
            if ids[k] != current:
                cut = (starts[k - 1] / SR + win + starts[k] / SR) / 2
                turns.append(SpeakerTurn(f"S{current}", round(run_start, 2), round(min(cut, n / SR), 2)))
                run_start, current = cut, ids[k]
        turns.append(SpeakerTurn(f"S{current}", round(run_start, 2), round(min(starts[-1] / SR + win, n / SR), 2)))
        main = np.bincount(ids).argmax()
        mean = emb[ids == main].mean(axis=0)
        return Speakers(count=len(set(ids.tolist())), by=self.by, turns=tuple(turns),
                        embedding=tuple(round(float(v), 4) for v in mean / np.linalg.norm(mean)))


def check_pipeline(path: str, key: str = "label.speakers.model") -> None:
    """A pyannote pipeline is a local folder with config.yaml, and needs pyannote.audio installed."""
    import importlib.util
    import os

    from processors.labelers.models import ModelMissing

    if not os.path.isfile(os.path.join(path, "config.yaml")):
        raise ModelMissing(f"{key}: {path} is not a local pyannote.audio pipeline (a folder with config.yaml); "
                           "pipelines load from a local folder only, or use resemblyzer")
    if importlib.util.find_spec("pyannote.audio") is None:
        raise ModelMissing(f"{key}: a pyannote pipeline needs `pip install pyannote.audio==4.0.7`")


class PyannoteDiarizer:
    def __init__(self, p: SpeakerParams):
        import os
        from importlib.metadata import version

        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")        # no telemetry from workers
        import torch
        from pyannote.audio import Pipeline

        check_pipeline(p.model)
        self.torch = torch
        self.pipeline = Pipeline.from_pretrained(p.model)
        if torch.cuda.is_available():
            self.pipeline.to(torch.device("cuda"))
        self.by = f"{os.path.basename(os.path.normpath(p.model))}@pyannote.audio-{version('pyannote.audio')}"

    def timeline(self, segments: list[tuple[str, float, np.ndarray]]) -> tuple[float, np.ndarray]:
        """(start of the first segment, the segments laid at their times on one array, zeros between)."""
        t0 = min(start for _, start, _ in segments)
        end = max(round((start - t0) * SR) + len(x) for _, start, x in segments)
        audio = np.zeros(end, np.float32)
        for _, start, x in segments:
            at = round((start - t0) * SR)
            audio[at:at + len(x)] = x
        return t0, audio

    def tracks(self, audio: np.ndarray) -> tuple[list[tuple[str, float, float]], dict[str, np.ndarray]]:
        """(turns as (label, start, end) in time order, embedding per label) from the pipeline."""
        out = self.pipeline({"waveform": self.torch.from_numpy(audio)[None], "sample_rate": SR})
        ann = getattr(out, "exclusive_speaker_diarization", None) or getattr(out, "speaker_diarization", out)
        turns = sorted((t.start, t.end, str(label)) for t, _, label in ann.itertracks(yield_label=True))
        emb = getattr(out, "speaker_embeddings", None)
        labels = [str(lab) for lab in ann.labels()]
        vectors = {lab: np.asarray(emb[i], np.float32) for i, lab in enumerate(labels)} if emb is not None else {}
        return [(lab, a, b) for a, b, lab in turns], vectors

    def diarize(self, segments: list[tuple[str, float, np.ndarray]]) -> dict[str, Speakers]:
        if not segments:
            return {}
        t0, audio = self.timeline(segments)
        turns, vectors = self.tracks(audio)
        names = {lab: f"S{n}" for n, lab in enumerate(dict.fromkeys(lab for lab, _, _ in turns))}
        out = {}
        for key, start, x in segments:
            a, b = start - t0, start - t0 + len(x) / SR
            mine = [(lab, max(s, a) - a, min(e, b) - a) for lab, s, e in turns if min(e, b) - max(s, a) > 0.01]
            if not mine:
                continue
            talk: dict[str, float] = {}
            for lab, s, e in mine:
                talk[lab] = talk.get(lab, 0.0) + e - s
            main = vectors.get(max(talk, key=talk.get))
            embedding = ()
            if main is not None and np.isfinite(main).all() and np.linalg.norm(main) > 0:
                embedding = tuple(round(float(v), 4) for v in main / np.linalg.norm(main))
            out[key] = Speakers(count=len(talk), by=self.by, embedding=embedding,
                                turns=tuple(SpeakerTurn(names[lab], round(s, 2), round(e, 2)) for lab, s, e in mine))
        return out


def der(reference: list[tuple[str, float, float]], hypothesis: list[tuple[str, float, float]],
        step: float = 0.01) -> float:
    """Diarization error rate, frame-based (10 ms, no collar): missed + false alarm + confused speech over
    reference speech, hypothesis speakers mapped to reference ones to minimise the error (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    end = max([e for _, _, e in reference + hypothesis] + [0.0])
    frames = int(np.ceil(end / step)) + 1
    ref_names = sorted({s for s, _, _ in reference})
    hyp_names = sorted({s for s, _, _ in hypothesis})
    R = np.zeros((len(ref_names), frames), bool)
    H = np.zeros((len(hyp_names), frames), bool)
    for M, names, turns in ((R, ref_names, reference), (H, hyp_names, hypothesis)):
        for s, a, b in turns:
            M[names.index(s), int(round(a / step)):int(round(b / step))] = True
    n_ref, n_hyp = R.sum(axis=0), H.sum(axis=0)
    total = n_ref.sum()
    if total == 0:
        return 0.0
    overlap = (R[:, None, :] & H[None, :, :]).sum(axis=2).astype(float)
    rows, cols = linear_sum_assignment(-overlap) if overlap.size else ([], [])
    correct = overlap[rows, cols].sum() if len(rows) else 0.0
    errors = np.maximum(n_ref, n_hyp).sum() - correct
    return float(errors / total)
