"""PANNs CNN6 / CNN10 / CNN14 sound-event embeddings (AudioSet-pretrained), as released by PaddleSpeech.

The networks are PaddleSpeech's own (``paddlespeech.cls.models.panns``, ``extract_embedding=True``):
the output is the ReLU'd ``fc1`` layer, 512-d for CNN6/CNN10 and 2048-d for CNN14. The front end is
the one PaddleSpeech's ``cls`` pipeline uses for these releases: a 32 kHz log-mel spectrogram
(``paddle.audio.features.LogMelSpectrogram``, n_fft 1024, hop 320, Hann window 1024, 50-14000 Hz,
64 mel bands, power 2, dB with ref 1, amin 1e-10, no top-dB clipping), overridden by the release's
own ``panns.yaml`` when it ships one. Weights are located by :mod:`.paddlespeech_weights`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import paddle_thread
from . import paddlespeech_weights as pw
from .base import ModelInfo

SAMPLE_RATE = 32000
#: PaddleSpeech's cls feature settings (examples/esc50/cls0/conf/panns.yaml, cli/cls/infer.py).
FEATURE_DEFAULTS = {
    "sample_rate": SAMPLE_RATE,
    "n_fft": 1024,
    "hop_length": 320,
    "window": "hann",
    "window_length": 1024,
    "f_min": 50.0,
    "f_max": 14000.0,
    "n_mels": 64,
}
#: The deepest network (CNN14) halves the time axis 5 times: it needs >= 32 frames.
MIN_SAMPLES = 32 * FEATURE_DEFAULTS["hop_length"]
PROBE_FRAMES = 301   # a 3 s probe input to check the compiled network against the eager one


def feature_config(config_path: Path | None) -> dict:
    """The release's ``feature`` section (CLI key names) over :data:`FEATURE_DEFAULTS`.

    Raises :class:`~.paddlespeech_weights.WeightsInvalid` when it asks for another sample rate
    or number of mel bands than the network and this model's contract allow.
    """
    conf = dict(FEATURE_DEFAULTS)
    if config_path is not None:
        import yaml

        try:
            with open(config_path, encoding="utf-8") as f:
                section = (yaml.safe_load(f) or {}).get("feature") or {}
        except (OSError, yaml.YAMLError, AttributeError) as e:
            raise pw.WeightsInvalid(f"{config_path} is not a readable PANNs config: {e}") from None
        aliases = {"sr": "sample_rate", "win_length": "window_length"}
        for key, value in section.items():
            key = aliases.get(key, key)
            if key in conf:
                conf[key] = value
    if int(conf["sample_rate"]) != SAMPLE_RATE or int(conf["n_mels"]) != FEATURE_DEFAULTS["n_mels"]:
        raise pw.WeightsInvalid(f"{config_path} asks for {conf['sample_rate']} Hz and "
                                f"{conf['n_mels']} mel bands; PANNs here use {SAMPLE_RATE} Hz and "
                                f"{FEATURE_DEFAULTS['n_mels']} bands")
    return conf


def build_network(arch: str):
    """PaddleSpeech's PANNs network ``arch`` ("cnn6", "cnn10", "cnn14") in embedding mode, eval()."""
    from paddlespeech.cls.models.panns import CNN6, CNN10, CNN14

    classes = {"cnn6": CNN6, "cnn10": CNN10, "cnn14": CNN14}
    if arch not in classes:
        raise ValueError(f"unknown PANNs network {arch!r}; choose one of {sorted(classes)}")
    net = classes[arch](extract_embedding=True)
    net.eval()
    return net


def build_frontend(conf: dict):
    """The log-mel layer of PaddleSpeech's cls inference, from a :func:`feature_config` dict."""
    from paddle.audio.features import LogMelSpectrogram

    return LogMelSpectrogram(sr=int(conf["sample_rate"]), n_fft=int(conf["n_fft"]),
                             hop_length=int(conf["hop_length"]), window=conf["window"],
                             win_length=int(conf["window_length"]), f_min=float(conf["f_min"]),
                             f_max=float(conf["f_max"]), n_mels=int(conf["n_mels"]))


def group_by_length(waveforms: list[np.ndarray]) -> list[list[int]]:
    """Indices of ``waveforms`` grouped by length, so batches need no padding."""
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(waveforms):
        groups.setdefault(len(w), []).append(i)
    return list(groups.values())


class _Panns(pw.ReleaseModel):
    """Shared implementation; subclasses set ``info`` and ``arch``."""

    arch: str

    def __init__(self) -> None:
        super().__init__()
        self._frontend = None

    def _load(self) -> None:
        found = pw.ensure(self.release, self.weights_dir())  # before importing paddle
        conf = feature_config(found.config)
        self._net, self._frontend = paddle_thread.call(self._build, found.params, conf)
        self._n_mels = int(conf["n_mels"])
        self.source = found.params

    def _build(self, params: Path, conf: dict):
        """The network with the release's weights and the front end, both eval() (Paddle thread)."""
        net = build_network(self.arch)
        state = pw.read_state_dict(params)
        pw.check_state_dict(net.state_dict(), state, params)
        net.set_state_dict(state)
        net.eval()
        frontend = build_frontend(conf)
        frontend.eval()
        return net, frontend

    def _features(self, batch: np.ndarray) -> np.ndarray:
        """(B, samples) -> (B, 1, frames, n_mels) log-mel input of the network (Paddle thread)."""
        import paddle

        with paddle.no_grad():
            feats = self._frontend(paddle.to_tensor(batch))               # [B, n_mels, T]
            return paddle.transpose(feats, [0, 2, 1]).unsqueeze(1).numpy()  # [B, 1, T, n_mels]

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(waveforms), self.info.dim), dtype=np.float32)
        if self._run is None:
            n_mels = self._n_mels
            probe = np.random.default_rng(0).standard_normal((2, 1, PROBE_FRAMES, n_mels)).astype(np.float32)
            self._run = self.compiled(self._net, (None, 1, None, n_mels), probe)
        for idx in group_by_length(waveforms):
            batch = np.stack([waveforms[i] for i in idx]).astype(np.float32)
            out[idx] = self._run(paddle_thread.call(self._features, batch))
        return out


def _info(name: str, dim: int, what: str) -> ModelInfo:
    return ModelInfo(
        name=name, task="sound", sample_rate=SAMPLE_RATE, dim=dim,
        description=f"PANNs {what} (AudioSet, PaddleSpeech release), {dim}-d",
        runtime="paddle", licence="PANNs weights by Kong et al. (CC BY 4.0), converted by PaddleSpeech (Apache-2.0)",
        window_s=10.0, hop_s=5.0, min_samples=MIN_SAMPLES, min_duration_s=0.25)


class PannsCNN6(_Panns):
    arch = "cnn6"
    info = _info("panns_cnn6", 512, "CNN6")


class PannsCNN10(_Panns):
    arch = "cnn10"
    info = _info("panns_cnn10", 512, "CNN10")


class PannsCNN14(_Panns):
    arch = "cnn14"
    info = _info("panns_cnn14", 2048, "CNN14")
