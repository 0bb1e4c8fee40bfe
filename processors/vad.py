"""Voice activity detection with silero-vad (onnx, weights shipped in the package) and the pure
functions that turn per-frame speech probabilities into ≤ 30 s speech regions.

Frames are silero's: 512 samples at 16 kHz = 32 ms. Regions are half-open ``(start_frame, end_frame)``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np

FRAME = 512
SR = 16000
FRAME_S = FRAME / SR  # 0.032 s

Region = tuple[int, int]


def frames(seconds: float) -> int:
    return int(round(seconds / FRAME_S))


class SileroVad:
    """silero-vad's sequence model (the onnx file shipped in the silero-vad package): one onnx call per
    block of frames carrying the LSTM state, numpy in, probabilities out. Runs without importing torch.

    Loads once per worker (Ray calls ``__init__`` on the actor). ``probs(x)`` for 16 kHz float32 ``x`` of
    n samples returns ``ceil(n / 512)`` speech probabilities in [0, 1].
    """

    MODEL_FILE = "silero_vad_16k_sequence.onnx"
    CONTEXT = 64

    def __init__(self, max_frames: int = 512, device: str = "cpu"):
        spec = importlib.util.find_spec("silero_vad")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("VAD needs silero-vad: pip install silero-vad onnxruntime")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("VAD needs onnxruntime: pip install onnxruntime") from e
        path = os.path.join(spec.submodule_search_locations[0], "data", self.MODEL_FILE)
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = opts.intra_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        available = set(ort.get_available_providers())
        self._session = ort.InferenceSession(path, sess_options=opts, providers=[p for p in providers if p in available])
        self._max_frames = max_frames
        self.version = f"silero-vad@{_package_version('silero-vad')}"

    def probs(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        n_frames = -(-len(x) // FRAME)
        if n_frames == 0:
            return np.zeros(0, np.float32)
        padded = np.zeros(n_frames * FRAME + self.CONTEXT, np.float32)
        padded[self.CONTEXT:self.CONTEXT + len(x)] = x
        # Frame i is its 512 samples prefixed by the 64 before them (zeros before the first).
        windows = np.lib.stride_tricks.as_strided(
            padded, shape=(n_frames, FRAME + self.CONTEXT), strides=(FRAME * 4, 4))
        h = np.zeros((1, 1, 128), np.float32)
        c = np.zeros((1, 1, 128), np.float32)
        out = []
        for i in range(0, n_frames, self._max_frames):
            block = np.ascontiguousarray(windows[i:i + self._max_frames])
            p, h, c = self._session.run(["speech_probs", "hn", "cn"], {"input": block, "h": h, "c": c})
            out.append(p)
        return np.concatenate(out).reshape(-1).astype(np.float32)


def _package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


@dataclasses.dataclass(frozen=True)
class VadParams:
    """Settings of the region planner, in seconds (converted to frames inside)."""

    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech_s: float = 0.25
    min_silence_s: float = 0.1
    merge_gap_s: float = 0.5
    max_segment_s: float = 30.0
    pad_s: float = 0.2


def speech_regions(probs: np.ndarray, threshold: float, neg_threshold: float,
                   min_speech: int, min_silence: int) -> list[Region]:
    """Hysteresis: speech starts at p ≥ threshold, ends after ``min_silence`` frames below neg_threshold.

    >>> speech_regions(np.array([0, .9, .9, .9, 0, 0, 0]), .5, .35, 2, 2)
    [(1, 4)]
    """
    regions: list[Region] = []
    start, silence_start = None, None
    for i, p in enumerate(probs):
        if start is None:
            if p >= threshold:
                start, silence_start = i, None
            continue
        if p < neg_threshold:
            if silence_start is None:
                silence_start = i
            if i + 1 - silence_start >= min_silence:
                if silence_start - start >= min_speech:
                    regions.append((start, silence_start))
                start, silence_start = None, None
        elif p >= threshold:
            silence_start = None
    if start is not None:
        end = silence_start if silence_start is not None else len(probs)
        if end - start >= min_speech:
            regions.append((start, end))
    return regions


def merge_gaps(regions: list[Region], max_gap: int) -> list[Region]:
    """Join neighbours whose gap is shorter than ``max_gap`` frames: [(0,5),(6,9)], 2 → [(0,9)]."""
    merged: list[Region] = []
    for r in regions:
        if merged and r[0] - merged[-1][1] < max_gap:
            merged[-1] = (merged[-1][0], r[1])
        else:
            merged.append(r)
    return merged


def split_long(region: Region, probs: np.ndarray, max_len: int, min_piece: int) -> list[Region]:
    """Split a region longer than ``max_len`` frames at its longest pause, recursively.

    The longest run of frames below the median probability wins; its middle is the cut. With no pause
    (flat probabilities), the cut falls at the lowest-probability frame, else at the middle.
    """
    start, end = region
    if end - start <= max_len:
        return [region]
    lo, hi = start + min_piece, end - min_piece
    cut = _longest_pause_middle(probs[lo:hi]) + lo if hi > lo else (start + end) // 2
    return split_long((start, cut), probs, max_len, min_piece) + split_long((cut, end), probs, max_len, min_piece)


def _longest_pause_middle(p: np.ndarray) -> int:
    quiet = p < min(np.median(p), 0.5)
    best_len, best_mid, run_start = 0, int(np.argmin(p)), None
    for i, q in enumerate(np.append(quiet, False)):
        if q and run_start is None:
            run_start = i
        elif not q and run_start is not None:
            if i - run_start > best_len:
                best_len, best_mid = i - run_start, (run_start + i) // 2
            run_start = None
    return best_mid


def pad_regions(regions: list[Region], pad: int, n_frames: int) -> list[Region]:
    """Widen each region by ``pad`` frames, clamped to [0, n_frames], never overlapping a neighbour."""
    out: list[Region] = []
    for i, (s, e) in enumerate(regions):
        left_limit = 0 if i == 0 else (regions[i - 1][1] + s + 1) // 2
        right_limit = n_frames if i == len(regions) - 1 else (e + regions[i + 1][0]) // 2
        out.append((max(left_limit, s - pad), min(right_limit, e + pad)))
    return out


def plan_speech(probs: np.ndarray, params: VadParams) -> list[Region]:
    """Per-frame probabilities → padded speech regions of at most ``max_segment_s``."""
    pad = frames(params.pad_s)
    raw = speech_regions(probs, params.threshold, params.neg_threshold,
                         frames(params.min_speech_s), max(1, frames(params.min_silence_s)))
    merged = merge_gaps(raw, frames(params.merge_gap_s))
    max_len = frames(params.max_segment_s) - 2 * pad
    pieces = [p for r in merged for p in split_long(r, probs, max_len, min_piece=max(1, max_len // 4))]
    return pad_regions(pieces, pad, len(probs))
