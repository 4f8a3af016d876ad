"""A weight-free baseline: statistics of MFCCs. Honest and fast, the floor of the evaluation table."""
from __future__ import annotations

from functools import lru_cache

import librosa
import numpy as np
import scipy.fft

from .base import EmbeddingModel, ModelInfo

N_MFCC = 40


class MfccStats(EmbeddingModel):
    """Mean and standard deviation over time of 40 MFCCs (16 kHz, 64 mel bands) -> 80-d."""

    info = ModelInfo(
        centered=True,  # mean subtracted by default: README, "Centering"
        name="mfcc_stats",
        task="sound",
        sample_rate=16000,
        dim=2 * N_MFCC,
        description="MFCC mean+std (weight-free baseline, no training)",
        runtime="numpy",
        licence="none needed",
        window_s=5.0,
        hop_s=2.5,
        min_samples=2048,
        min_duration_s=0.1,  # also the speaker baseline: FSDD digits are 0.14 s and up
    )

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        rows = []
        for w in waveforms:
            m = mfcc(w, self.info.sample_rate)
            rows.append(np.concatenate([m.mean(axis=1), m.std(axis=1)]))
        return np.stack(rows)


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels).astype(np.float32)


def mfcc(y: np.ndarray, sr: int, n_mfcc: int = N_MFCC, n_mels: int = 64, n_fft: int = 512,
         hop_length: int = 160) -> np.ndarray:
    """``librosa.feature.mfcc`` with the same defaults, but a cached mel basis and a plain matrix
    product (librosa's einsum path is ~10x slower here). Returns (n_mfcc, frames)."""
    power = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length)) ** 2
    mel_db = librosa.power_to_db(_mel_basis(sr, n_fft, n_mels) @ power)
    return scipy.fft.dct(mel_db, axis=0, type=2, norm="ortho")[:n_mfcc]
