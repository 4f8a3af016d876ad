"""aiSFX sound-effect embeddings (Ma & Lerch, ISMIR 2022), ported to PaddlePaddle.

The weights are ``aisfx/models/checkpoint.pth`` from the ``aisfx==0.1.2`` wheel on PyPI (package
licence MIT; the authors' README puts the pretrained model under CC BY 4.0), fetched once into the
weights folder and converted to numpy by :mod:`.torch_pickle`. Only the embedding network is used
(the per-dataset classifier heads are dropped).

The pipeline reproduces the package's librosa inference path:

1. peak-normalise the 44.1 kHz waveform;
2. 96-band HTK mel power spectrogram (2048-sample Hann window, hop 1024, 0-22050 Hz, each filter
   normalised to unit sum), compressed as ``log10(10000 * S + 1)`` and min-max normalised with the
   package's fixed range [0, 9.4578];
3. transposed to time x mel bins (the network's layout) and cut into 100-frame blocks (~2.3 s)
   every 50 frames, dropping an incomplete last block; shorter clips are zero-padded to one block;
4. four conv blocks (3x3 conv, batch norm, ReLU, twice; 2x2 max-pool after the first three),
   64 -> 128 -> 256 -> 512 channels, mean over mel bins, max over time: 512-d per block.

A clip's embedding is the mean of its block embeddings (the package returns the blocks).
"""
from __future__ import annotations


import numpy as np

from .base import ModelInfo, mean_per_clip
from .wheel_weights import WheelCheckpointModel, WheelMember, assign_checked

SAMPLE_RATE = 44100
N_FFT = 2048
HOP = 1024
MEL_BINS = 96
SPEC_MAX = 9.457798957824707   # the package's "original" normalisation range is [0, SPEC_MAX]
BLOCK_FRAMES = 100
BLOCK_HOP = 50
CHANNELS = (64, 128, 256, 512)
MAX_BLOCKS_PER_PASS = 32        # bounds memory: ~2.5 MB of activations per block in conv block 1

WEIGHTS = WheelMember(
    package="aisfx",
    version="0.1.2",
    member="aisfx/models/checkpoint.pth",
    sha256="499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5",
    size=24_900_277,
)
_PREFIX = "0/embedding_net."   # the checkpoint is (state_dict, dataset dict)

_mel_basis: np.ndarray | None = None


def mel_basis() -> np.ndarray:
    """The (96, 1025) HTK mel filterbank, each filter summing to one (librosa ``norm=1.0``)."""
    global _mel_basis
    if _mel_basis is None:
        import librosa
        _mel_basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=MEL_BINS, fmin=0.0,
                                         fmax=SAMPLE_RATE / 2, htk=True, norm=1.0)
    return _mel_basis


def spectrogram(wav: np.ndarray) -> np.ndarray:
    """(frames, 96) normalised log-mel spectrogram of a 44.1 kHz waveform, time x mel bins."""
    import librosa
    y = np.asarray(wav, dtype=np.float32)
    peak = np.max(np.abs(y)) if len(y) else 0.0
    y = y / (peak if peak > 0 else 1.0)
    power = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window="hann",
                                center=True, pad_mode="constant")) ** 2
    mel = np.log10(mel_basis() @ power * 10000.0 + 1)
    return (mel.T / SPEC_MAX).astype(np.float32)


def blocks(spec: np.ndarray) -> np.ndarray:
    """(n_blocks, 100, 96): 100-frame blocks every 50 frames, as the package's ``blocking``.

    An incomplete last block is dropped unless it is the only one; it is then zero-padded.
    """
    n = spec.shape[0]
    count = int(np.ceil((n - BLOCK_FRAMES) / BLOCK_HOP + 1))
    if (n - BLOCK_FRAMES) % BLOCK_HOP != 0:
        count -= 1
    count = max(count, 1)
    padded = np.concatenate([spec, np.zeros((BLOCK_FRAMES, spec.shape[1]), dtype=spec.dtype)])
    idx = np.arange(count)[:, None] * BLOCK_HOP + np.arange(BLOCK_FRAMES)[None, :]
    return padded[idx]


def _build_network(arrays: dict[str, np.ndarray]):
    import paddle
    nn = paddle.nn

    class ConvBlock(nn.Layer):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2D(cin, cout, 3, padding=1, bias_attr=False)
            self.conv2 = nn.Conv2D(cout, cout, 3, padding=1, bias_attr=False)
            self.bn1 = nn.BatchNorm2D(cout, epsilon=1e-5)
            self.bn2 = nn.BatchNorm2D(cout, epsilon=1e-5)

        def forward(self, x, pool: bool):
            x = nn.functional.relu(self.bn1(self.conv1(x)))
            x = nn.functional.relu(self.bn2(self.conv2(x)))
            return nn.functional.max_pool2d(x, 2) if pool else x

    class EmbeddingNet(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            cin = 1
            for i, c in enumerate(CHANNELS, 1):
                setattr(self, f"conv_block{i}", ConvBlock(cin, c))
                cin = c

        def forward(self, x):                       # (batch, time, mel)
            x = x.unsqueeze(1)
            x = self.conv_block1(x, True)
            x = self.conv_block2(x, True)
            x = self.conv_block3(x, True)
            x = self.conv_block4(x, False)
            return x.mean(axis=3).max(axis=2)       # mean over mel bins, max over time

    net = EmbeddingNet()
    names = {"weight": "weight", "bias": "bias", "_mean": "running_mean", "_variance": "running_var"}
    for name, tensor in net.state_dict().items():
        block, layer, kind = name.split(".")
        assign_checked(tensor, arrays, f"{block}.{layer}.{names[kind]}", WEIGHTS, _PREFIX)
    net.eval()
    return net


class AisfxModel(WheelCheckpointModel):
    """aiSFX sound-effect embeddings, 512-d, 44.1 kHz, Paddle port of the PyPI weights."""

    info = ModelInfo(
        centered=True,  # mean subtracted by default: README, "Centering"
        name="aisfx",
        task="sound",
        sample_rate=SAMPLE_RATE,
        dim=CHANNELS[-1],
        description="aiSFX CNN trained on sound-effect libraries (mean of 2.3 s blocks)",
        runtime="paddle",
        licence="MIT package; README: model CC BY 4.0",
        window_s=10.0,
        hop_s=5.0,
        min_samples=N_FFT,
        min_duration_s=0.25,  # a short impact is a fair query; less is a few STFT frames
    )

    weights = WEIGHTS
    checkpoint_prefix = _PREFIX
    input_shape = (None, BLOCK_FRAMES, MEL_BINS)

    def _build_network(self, arrays: dict[str, np.ndarray]):
        return _build_network(arrays)

    def block_embeddings(self, batch: np.ndarray) -> np.ndarray:
        """(n, 100, 96) spectrogram blocks -> (n, 512) raw (unnormalised) block embeddings."""
        self.load()
        out = [self._run(batch[start:start + MAX_BLOCKS_PER_PASS])
               for start in range(0, len(batch), MAX_BLOCKS_PER_PASS)]
        return np.concatenate(out) if out else np.zeros((0, CHANNELS[-1]), np.float32)

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        per_clip = [blocks(spectrogram(w)) for w in waveforms]
        return mean_per_clip(self.block_embeddings(np.concatenate(per_clip)), [len(b) for b in per_clip])
