"""Embedding model registry.

Each entry maps a model name to the module and class that implement it; modules are imported
only when a model is used, so listing models never imports paddle, onnxruntime or torch code.
Your own ONNX models (``$WEIGHTS_DIR/custom/<name>.onnx`` with a card ``<name>.toml``, see
:mod:`.onnx_card`) follow the built-in ones, found afresh on every listing; their status opens
the graph with onnxruntime (once per version of the two files).
"""
from __future__ import annotations

import importlib
import threading

from . import onnx_card
from .base import EmbeddingModel, ModelInfo, ModelStatus, WeightsNotInstalled, l2_normalize
from .own_model import OnnxCardModel

# name -> (module, class). Order is the order shown in the UI.
_REGISTRY: dict[str, tuple[str, str]] = {
    "aisfx": (".aisfx", "AisfxModel"),
    "resemblyzer": (".resemblyzer", "ResemblyzerModel"),
    "panns_cnn14": (".panns", "PannsCNN14"),
    "panns_cnn10": (".panns", "PannsCNN10"),
    "panns_cnn6": (".panns", "PannsCNN6"),
    "ecapa_tdnn": (".ecapa", "EcapaTdnn"),
    "yamnet": (".yamnet", "YamnetModel"),
    "aisfx_yamnet": (".combined", "AisfxYamnet"),
    "mfcc_stats": (".mfcc", "MfccStats"),
}

_instances: dict[str, EmbeddingModel] = {}
# (card path) -> (signature of card and graph files, instance): replaced when either file changes
_custom: dict[str, tuple[tuple, EmbeddingModel]] = {}
_lock = threading.Lock()


def _custom_models() -> tuple[dict, list[str]]:
    from ..config import get_settings

    return onnx_card.discover(get_settings().weights_dir, reserved=set(_REGISTRY))


def model_names() -> list[str]:
    """All registered model names whose implementation module is present, then your own models."""
    names = []
    for name, (module, _cls) in _REGISTRY.items():
        if importlib.util.find_spec(module, __name__) is not None:
            names.append(name)
    return names + sorted(_custom_models()[0])


def custom_model_problems() -> list[str]:
    """One sentence per file in ``$WEIGHTS_DIR/custom`` that cannot be listed as a model (its name)."""
    return _custom_models()[1]


def get_model(name: str) -> EmbeddingModel:
    """The shared instance of model ``name`` (weights are loaded on first embed, not here)."""
    if name in _REGISTRY:
        with _lock:
            if name not in _instances:
                module, cls = _REGISTRY[name]
                _instances[name] = getattr(importlib.import_module(module, __name__), cls)()
            return _instances[name]
    custom = _custom_models()[0].get(name) if isinstance(name, str) else None
    if custom is None:
        shown = repr(name) if len(str(name)) <= 64 else repr(str(name)[:61] + "...")  # never echo a megabyte
        raise KeyError(f"unknown model {shown}; choose one of: {', '.join(model_names())}")
    card, graph = custom
    sig = onnx_card.signature(card, graph)
    with _lock:
        have = _custom.get(str(card))
        if have is None or have[0] != sig:
            have = _custom[str(card)] = (sig, OnnxCardModel(name, card, graph))
        return have[1]


def describe(name: str) -> str:
    """One line for a dropdown: name, task, dimension, rate and the weights' status as it is now.

    The status is read afresh on every call (a few file checks, never a download): "ready",
    "downloads on first use (25 MB)", "needs <file> in <folder>"; opt-in models add
    "opt-in: licence not stated".
    """
    m = get_model(name)
    i = m.info
    st = m.status()
    own = isinstance(m, OnnxCardModel)
    if own and m.card is None:  # no task, dim or rate to show
        return f"{i.name} — {st.short or st.message}"
    status = "ready" if st.ready else (st.short or st.message)
    if i.opt_in:
        status += " · opt-in: licence not stated"
    if own:
        licence = i.licence if len(i.licence) <= 60 else i.licence[:57] + "..."
        status += f" · your own model ({licence})"
    return f"{i.name} — {i.task}, {i.dim}-d, {i.sample_rate / 1000:g} kHz, {status}"


__all__ = ["EmbeddingModel", "ModelInfo", "ModelStatus", "WeightsNotInstalled", "l2_normalize",
           "get_model", "model_names", "custom_model_problems", "describe"]
