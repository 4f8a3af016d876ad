"""ECAPA-TDNN speaker embeddings (VoxCeleb1+2), as released by PaddleSpeech (``ecapatdnn_voxceleb12-16k``).

The network is PaddleSpeech's ``paddlespeech.vector.models.ecapa_tdnn.EcapaTdnn`` built from the
``model`` section of the release's ``conf/model.yaml`` (the voxceleb12 configuration: 80 inputs,
channels 1024x4 + 3072, 192-d output). The front end is the vector pipeline's: an 80-band log-mel
"fbank" from ``paddlespeech.audio.compliance.librosa.melspectrogram`` (16 kHz, 25 ms window, 10 ms
hop, from the yaml) followed by per-utterance mean normalisation over time (``feature_normalize``
with ``mean_norm=True, std_norm=False``), exactly as ``paddlespeech vector`` does at inference.
The release's state dict is that of ``SpeakerIdetification``: the backbone's parameters are
prefixed ``backbone.`` and the speaker-classifier matrix ``weight`` is not needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import paddle_thread
from . import paddlespeech_weights as pw
from .base import ModelInfo
from .panns import group_by_length

SAMPLE_RATE = 16000
DIM = 192
#: examples/voxceleb/sv0/conf/ecapa_tdnn.yaml (the release's conf/model.yaml follows it).
VOX12_CONFIG = {
    "sr": SAMPLE_RATE,
    "n_mels": 80,
    "window_size": 400,
    "hop_size": 160,
    "model": {
        "input_size": 80,
        "channels": [1024, 1024, 1024, 1024, 3072],
        "kernel_sizes": [5, 3, 3, 3, 1],
        "dilations": [1, 2, 3, 4, 1],
        "attention_channels": 128,
        "lin_neurons": DIM,
    },
}
BACKBONE_PREFIX = "backbone."
CLASSIFIER_KEYS = ("weight",)  # SpeakerIdetification's (192, num_speakers) training head


def read_config(config_path: Path | None) -> dict:
    """The release's ``model.yaml`` (only the keys used here), or :data:`VOX12_CONFIG` if absent."""
    if config_path is None:
        return {**VOX12_CONFIG, "model": dict(VOX12_CONFIG["model"])}
    import yaml

    try:
        with open(config_path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        conf = {k: raw.get(k, VOX12_CONFIG[k]) for k in ("sr", "n_mels", "window_size", "hop_size")}
        conf["model"] = dict(raw["model"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise pw.WeightsInvalid(f"{config_path} is not a readable ECAPA-TDNN model.yaml "
                                f"({type(e).__name__}: {e})") from None
    if int(conf["sr"]) != SAMPLE_RATE or int(conf["model"].get("lin_neurons", DIM)) != DIM:
        raise pw.WeightsInvalid(f"{config_path} describes a {conf['sr']} Hz, "
                                f"{conf['model'].get('lin_neurons')}-d model; "
                                f"ecapa_tdnn here is {SAMPLE_RATE} Hz, {DIM}-d")
    return conf


def build_network(model_conf: dict):
    """PaddleSpeech's ``EcapaTdnn(**model_conf)`` in eval mode."""
    from paddlespeech.vector.models.ecapa_tdnn import EcapaTdnn as _Net

    try:
        net = _Net(**model_conf)
    except (TypeError, AssertionError, ValueError) as e:
        raise pw.WeightsInvalid(f"the ECAPA-TDNN model config {model_conf} is not valid: {e}") from None
    net.eval()
    return net


def backbone_state(state: dict) -> dict:
    """The backbone's parameters from a ``SpeakerIdetification`` (or bare backbone) state dict."""
    if any(k.startswith(BACKBONE_PREFIX) for k in state):
        return {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)
                } | {k: v for k, v in state.items()
                     if not k.startswith(BACKBONE_PREFIX) and k not in CLASSIFIER_KEYS}
    return {k: v for k, v in state.items() if k not in CLASSIFIER_KEYS}


def fbank(waveform: np.ndarray, conf: dict) -> np.ndarray:
    """Mean-normalised log-mel features (n_mels, frames) as ``paddlespeech vector`` computes them."""
    from paddlespeech.audio.compliance.librosa import melspectrogram

    feat = melspectrogram(x=np.asarray(waveform, dtype=np.float32), sr=int(conf["sr"]),
                          n_mels=int(conf["n_mels"]), window_size=int(conf["window_size"]),
                          hop_length=int(conf["hop_size"]))
    feat = feat.astype(np.float32)
    return feat - feat.mean(axis=-1, keepdims=True)


def _full_length(net):
    """``net`` with every input taken at full length (one argument, for the compiled graph)."""
    import paddle

    class FullLength(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, feats):                   # (batch, n_mels, frames)
            return self.net(feats, paddle.ones([paddle.shape(feats)[0]])).squeeze(-1)

    layer = FullLength()
    layer.eval()
    return layer


class EcapaTdnn(pw.ReleaseModel):
    """Speaker embedding of PaddleSpeech's ECAPA-TDNN trained on VoxCeleb1+2 (7205 speakers)."""

    info = ModelInfo(
        name="ecapa_tdnn", task="speaker", sample_rate=SAMPLE_RATE, dim=DIM,
        description="ECAPA-TDNN speaker embedding (VoxCeleb1+2, PaddleSpeech release), 192-d",
        runtime="paddle", licence="Apache-2.0 (PaddleSpeech release)",
        window_s=10.0, hop_s=5.0, min_samples=1600, min_duration_s=0.1)

    def __init__(self) -> None:
        super().__init__()
        self._conf: dict | None = None

    def _load(self) -> None:
        found = pw.ensure(self.release, self.weights_dir())  # before importing paddle
        conf = read_config(found.config)
        self._net = paddle_thread.call(self._build, found.params, conf)
        self._conf, self.source = conf, found.params

    @staticmethod
    def _build(params: Path, conf: dict):
        """The backbone with the release's weights, eval() (Paddle thread)."""
        from paddlespeech.audio.compliance import librosa  # noqa: F401  (imported here, with paddle)

        net = build_network(conf["model"])
        state = backbone_state(pw.read_state_dict(params))
        pw.check_state_dict(net.state_dict(), state, params)
        net.set_state_dict(state)
        net.eval()
        return net

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(waveforms), self.info.dim), dtype=np.float32)
        if self._run is None:
            n_mels = int(self._conf["n_mels"])
            probe = np.random.default_rng(0).standard_normal((2, n_mels, 201)).astype(np.float32)
            full = paddle_thread.call(_full_length, self._net)
            self._run = self.compiled(full, (None, n_mels, None), probe)
        for idx in group_by_length(waveforms):
            out[idx] = self._run(np.stack([fbank(waveforms[i], self._conf) for i in idx]))
        return out
