"""Perceived speech quality with DNSMOS (Reddy et al. 2022, P.835: signal, background and overall MOS, 1–5)
through the ``speechmos`` package, which ships the ONNX models; the ONNX sessions get one thread each, so
labeler workers do not fight over cores.

    DnsMos().scores(x) → (sig, bak, ovrl) for 16 kHz speech
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class QualityParams:
    model: str = "dnsmos"       # DNSMOS from the speechmos package
    threads: int = 1


class DnsMos:
    def __init__(self, p: QualityParams = QualityParams()):
        import onnxruntime as ort
        from importlib.metadata import version
        from processors.numba_cache import safe_librosa

        safe_librosa()                          # speechmos imports librosa
        from speechmos import dnsmos

        models = os.path.join(os.path.dirname(dnsmos.__file__), "dnsmos_models")
        primary, p808 = os.path.join(models, "sig_bak_ovr.onnx"), os.path.join(models, "model_v8.onnx")
        self.model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)      # its scoring, our sessions (one thread each)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = p.threads
        self.model.primary_model_path = primary
        self.model.onnx_sess = ort.InferenceSession(primary, sess_options=opts, providers=["CPUExecutionProvider"])
        self.model.p808_onnx_sess = ort.InferenceSession(p808, sess_options=opts, providers=["CPUExecutionProvider"])
        self.by = f"dnsmos@speechmos-{version('speechmos')}"

    def scores(self, x: np.ndarray) -> tuple[float, float, float]:
        """(sig, bak, ovrl) MOS of a clip: the mean over its 9.01 s windows, which do not overlap (DNSMOS's
        own script slides them by 1 s, nine times the work for the same average); a clip shorter than a
        window is repeated to fill it, as DNSMOS does, and cut to exactly one window (left to speechmos, a
        2.2 s clip doubles to 17.8 s and is scored nine times over)."""
        x = np.clip(np.asarray(x, np.float32), -1.0, 1.0)
        window = int(9.01 * 16000)
        starts = range(0, max(1, len(x) - window // 3), window)
        results = [self.model(_fill(x[s:s + window], window), 16000, False) for s in starts]
        mean = lambda k: round(float(np.mean([r[k] for r in results])), 3)  # noqa: E731
        return mean("sig_mos"), mean("bak_mos"), mean("ovrl_mos")


def _fill(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` repeated to ``n`` samples."""
    return np.tile(x, -(-n // max(len(x), 1)))[:n] if len(x) < n else x
