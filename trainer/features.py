"""Whisper log-mel features for a batch, as ``WhisperFeatureExtractor`` computes them (its torch path).

The extractor pads every clip to the full window (30 s for Qwen2-Audio) and runs the STFT over all of it.
Frames that lie wholly in the padding are known in advance: their power is 0, so their log-mel is
log10(1e-10) before the per-clip floor at (max − 8). ``LogMel`` runs the STFT only up to the batch's
longest clip plus one FFT window of zeros, so every frame it computes sees the same samples as in the
full-window STFT, and fills the rest with that constant. The result matches the extractor within float
rounding (power as re² + im² instead of |z|²), and the attention mask is the extractor's.
"""

from __future__ import annotations

import numpy as np
import torch


class LogMel:
    def __init__(self, feature_extractor):
        fe = feature_extractor
        if fe.sampling_rate != 16000:
            raise ValueError(f"the feature extractor runs at {fe.sampling_rate} Hz, not 16 kHz")
        self.n_fft, self.hop, self.n_samples = int(fe.n_fft), int(fe.hop_length), int(fe.n_samples)
        self.frames = self.n_samples // self.hop
        self.mel = torch.from_numpy(np.asarray(fe.mel_filters, dtype=np.float32)).T.contiguous()   # [mel, freq]
        self.window = torch.hann_window(self.n_fft)
        self.floor = torch.tensor(1e-10, dtype=torch.float32).log10().item()
        if float(getattr(fe, "dither", 0.0)):
            raise ValueError("dithered feature extraction is not supported")

    def __call__(self, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_features [batch, mel, frames] float32, feature_attention_mask [batch, frames] long)."""
        lengths = [min(len(a), self.n_samples) for a in audios]
        span = -(-(max(lengths) + self.n_fft) // self.hop) * self.hop
        span = min(span, self.n_samples)
        wave = torch.zeros(len(audios), span, dtype=torch.float32)
        for i, (a, n) in enumerate(zip(audios, lengths)):
            wave[i, :n] = torch.from_numpy(np.ascontiguousarray(a[:n], dtype=np.float32))
        k = span // self.hop
        stft = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True)[..., :k]
        ri = torch.view_as_real(stft)
        power = ri[..., 0] ** 2 + ri[..., 1] ** 2
        log_spec = torch.full((len(audios), self.mel.shape[0], self.frames), self.floor, dtype=torch.float32)
        log_spec[..., :k] = torch.clamp(self.mel @ power, min=1e-10).log10()
        top = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = (torch.maximum(log_spec, top - 8.0) + 4.0) / 4.0
        starts = torch.arange(self.frames) * self.hop
        mask = (starts[None, :] < torch.tensor(lengths)[:, None]).long()
        return log_spec, mask
