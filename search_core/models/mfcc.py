"""A weight-free baseline: statistics of MFCCs. Honest and fast, the floor of the evaluation table."""
from __future__ import annotations

import librosa
import numpy as np

from .base import EmbeddingModel, ModelInfo

N_MFCC = 40


class MfccStats(EmbeddingModel):
    """Mean and standard deviation over time of 40 MFCCs (16 kHz, 64 mel bands) -> 80-d."""

    info = ModelInfo(
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
    )

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        rows = []
        for w in waveforms:
            m = librosa.feature.mfcc(y=w, sr=self.info.sample_rate, n_mfcc=N_MFCC, n_mels=64,
                                     n_fft=512, hop_length=160)
            rows.append(np.concatenate([m.mean(axis=1), m.std(axis=1)]))
        return np.stack(rows)
