"""Resemblyzer's GE2E speaker encoder, ported to PaddlePaddle (no torch at run time).

The weights are ``resemblyzer/pretrained.pt`` from the ``resemblyzer==0.1.4`` wheel on PyPI
(Apache-2.0), fetched once into the weights folder and converted to numpy by
:mod:`.torch_pickle`. The pipeline reproduces the package's ``preprocess_wav`` (volume
normalisation to -30 dBFS, increase only; WebRTC VAD trimming of long silences) and
``VoiceEncoder.embed_utterance`` (1.6 s partials of 160 mel frames at 1.3 partials per second,
3-layer LSTM of 256, linear + ReLU, L2-normalised, partials averaged then renormalised).

One deliberate difference: when VAD trimming keeps less than :data:`MIN_VOICED_S` of a clip (a
very short clip, or one without speech), the untrimmed clip is embedded instead of (almost)
nothing.
"""
from __future__ import annotations


import numpy as np

from .base import ModelInfo, l2_normalize, mean_per_clip
from .wheel_weights import WheelCheckpointModel, WheelMember, assign_checked

SAMPLE_RATE = 16000
MEL_N_FFT = 400          # 25 ms
MEL_HOP = 160            # 10 ms
MEL_BINS = 40
PARTIAL_FRAMES = 160     # 1.6 s per partial utterance
PARTIAL_RATE = 1.3       # partials per second
MIN_COVERAGE = 0.75      # keep a last, zero-padded partial if it is at least this full
HIDDEN = 256
LAYERS = 3
VAD_WINDOW = 480         # 30 ms at 16 kHz
VAD_AVERAGE_WIDTH = 8
VAD_MAX_SILENCE = 6
NORM_TARGET_DBFS = -30.0
INT16_MAX = 2 ** 15 - 1
MIN_VOICED_S = 0.3       # fewer voiced seconds than this after VAD: embed the untrimmed clip

WEIGHTS = WheelMember(
    package="resemblyzer",
    version="0.1.4",
    member="resemblyzer/pretrained.pt",
    sha256="39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
    size=17_090_379,
)
_PREFIX = "model_state/"


# -- preprocessing (numpy) ------------------------------------------------------------------
def normalize_volume(wav: np.ndarray, target_dbfs: float = NORM_TARGET_DBFS) -> np.ndarray:
    """Scale ``wav`` up so its RMS is ``target_dbfs`` (never down), as resemblyzer does."""
    rms = np.sqrt(np.mean((wav * INT16_MAX) ** 2))
    with np.errstate(divide="ignore"):
        change = target_dbfs - 20 * np.log10(rms / INT16_MAX)
    if change < 0 or not np.isfinite(change):
        return wav
    return wav * (10 ** (change / 20))


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    padded = np.concatenate((np.zeros((width - 1) // 2), x, np.zeros(width // 2)))
    ret = np.cumsum(padded, dtype=float)
    ret[width:] = ret[width:] - ret[:-width]
    return ret[width - 1:] / width


def voice_mask(wav: np.ndarray) -> np.ndarray:
    """Per-sample boolean mask of the voiced regions of ``wav`` (16 kHz), cut to whole 30 ms windows.

    WebRTC VAD (mode 3) per 30 ms window, smoothed by a moving average of 8 windows and dilated
    by 6 windows, exactly as ``resemblyzer.audio.trim_long_silences``.
    """
    import webrtcvad
    from scipy.ndimage import binary_dilation

    n = len(wav) - len(wav) % VAD_WINDOW
    # float -> int16 wraps around on overflow, like numpy 1.x's direct cast on x86
    pcm = np.round(wav[:n] * INT16_MAX).astype(np.int64).astype("<i2").tobytes()
    vad = webrtcvad.Vad(3)
    flags = np.array([vad.is_speech(pcm[2 * i:2 * (i + VAD_WINDOW)], SAMPLE_RATE)
                      for i in range(0, n, VAD_WINDOW)], dtype=float)
    mask = np.round(_moving_average(flags, VAD_AVERAGE_WIDTH)).astype(bool)
    mask = binary_dilation(mask, np.ones(VAD_MAX_SILENCE + 1))
    return np.repeat(mask, VAD_WINDOW)


def preprocess(wav: np.ndarray) -> np.ndarray:
    """resemblyzer's ``preprocess_wav`` for a 16 kHz waveform, with the short-clip fallback."""
    wav = normalize_volume(np.asarray(wav, dtype=np.float32))
    trimmed = wav[: len(wav) - len(wav) % VAD_WINDOW][voice_mask(wav)]
    if len(trimmed) < MIN_VOICED_S * SAMPLE_RATE:
        return wav
    return trimmed


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame slices of the partial utterances, as ``VoiceEncoder.compute_partial_slices``."""
    n_frames = int(np.ceil((n_samples + 1) / MEL_HOP))
    frame_step = int(np.round((SAMPLE_RATE / PARTIAL_RATE) / MEL_HOP))
    steps = max(1, n_frames - PARTIAL_FRAMES + frame_step + 1)
    slices = [slice(i, i + PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    last = slices[-1]
    coverage = (n_samples - last.start * MEL_HOP) / (PARTIAL_FRAMES * MEL_HOP)
    if coverage < MIN_COVERAGE and len(slices) > 1:
        slices = slices[:-1]
    return slices


def partial_mels(wav: np.ndarray) -> np.ndarray:
    """(n_partials, 160, 40) mel power spectrogram partials of a preprocessed waveform."""
    import librosa

    slices = partial_slices(len(wav))
    need = slices[-1].stop * MEL_HOP
    if need >= len(wav):
        wav = np.pad(wav, (0, need - len(wav)))
    mel = librosa.feature.melspectrogram(
        y=wav, sr=SAMPLE_RATE, n_fft=MEL_N_FFT, hop_length=MEL_HOP, n_mels=MEL_BINS,
        center=True, pad_mode="constant", power=2.0).astype(np.float32).T
    return np.stack([mel[s] for s in slices])


# -- network (paddle) -----------------------------------------------------------------------
def _build_network(arrays: dict[str, np.ndarray]):
    import paddle

    class SpeakerEncoder(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = paddle.nn.LSTM(MEL_BINS, HIDDEN, LAYERS)
            self.linear = paddle.nn.Linear(HIDDEN, HIDDEN)

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            return paddle.nn.functional.relu(self.linear(hidden[-1]))

    net = SpeakerEncoder()
    params = dict(net.named_parameters())
    for layer in range(LAYERS):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            name = f"lstm.{kind}_l{layer}"
            _assign(params[name], arrays, name)
    _assign(params["linear.weight"], arrays, "linear.weight", transpose=True)  # paddle: (in, out)
    _assign(params["linear.bias"], arrays, "linear.bias")
    net.eval()
    return net


def _assign(param, arrays: dict[str, np.ndarray], key: str, transpose: bool = False) -> None:
    assign_checked(param, arrays, key, WEIGHTS, _PREFIX, transpose)


class ResemblyzerModel(WheelCheckpointModel):
    """GE2E speaker embeddings (Resemblyzer), 256-d, 16 kHz, Paddle port of the PyPI weights."""

    info = ModelInfo(
        centered=True,  # mean subtracted by default: README, "Centering"
        name="resemblyzer",
        task="speaker",
        sample_rate=SAMPLE_RATE,
        dim=HIDDEN,
        description="Resemblyzer GE2E speaker encoder (LSTM, VAD-trimmed, 1.6 s partials)",
        runtime="paddle",
        licence="Apache-2.0",
        window_s=10.0,
        hop_s=5.0,
        min_samples=VAD_WINDOW,
        min_duration_s=0.1,  # a spoken digit (FSDD: 0.14 s and up) still carries a voice
    )

    weights = WEIGHTS
    checkpoint_prefix = _PREFIX
    input_shape = (None, PARTIAL_FRAMES, MEL_BINS)

    def _build_network(self, arrays: dict[str, np.ndarray]):
        return _build_network(arrays)

    def partial_embeddings(self, mels: np.ndarray) -> np.ndarray:
        """(n, 160, 40) mel partials -> (n, 256) L2-normalised partial embeddings."""
        self.load()
        return l2_normalize(self._run(mels))

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        parts = [partial_mels(preprocess(w)) for w in waveforms]
        partial = self.partial_embeddings(np.concatenate(parts, axis=0))
        return l2_normalize(mean_per_clip(partial, [len(p) for p in parts]))
