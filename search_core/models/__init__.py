"""Embedding model registry.

Each entry maps a model name to the module and class that implement it; modules are imported
only when a model is used, so listing models never imports paddle, onnxruntime or torch code.
"""
from __future__ import annotations

import importlib
import threading

from .base import EmbeddingModel, ModelInfo, ModelStatus, WeightsNotInstalled, l2_normalize

# name -> (module, class). Order is the order shown in the UI.
_REGISTRY: dict[str, tuple[str, str]] = {
    "aisfx": (".aisfx", "AisfxModel"),
    "resemblyzer": (".resemblyzer", "ResemblyzerModel"),
    "panns_cnn14": (".panns", "PannsCNN14"),
    "panns_cnn10": (".panns", "PannsCNN10"),
    "panns_cnn6": (".panns", "PannsCNN6"),
    "ecapa_tdnn": (".ecapa", "EcapaTdnn"),
    "yamnet": (".yamnet", "YamnetModel"),
    "mfcc_stats": (".mfcc", "MfccStats"),
}

_instances: dict[str, EmbeddingModel] = {}
_lock = threading.Lock()


def model_names() -> list[str]:
    """All registered model names whose implementation module is present."""
    names = []
    for name, (module, _cls) in _REGISTRY.items():
        if importlib.util.find_spec(module, __name__) is not None:
            names.append(name)
    return names


def get_model(name: str) -> EmbeddingModel:
    """The shared instance of model ``name`` (weights are loaded on first embed, not here)."""
    if name not in _REGISTRY:
        shown = repr(name) if len(str(name)) <= 64 else repr(str(name)[:61] + "...")  # never echo a megabyte
        raise KeyError(f"unknown model {shown}; choose one of: {', '.join(model_names())}")
    with _lock:
        if name not in _instances:
            module, cls = _REGISTRY[name]
            _instances[name] = getattr(importlib.import_module(module, __name__), cls)()
        return _instances[name]


def describe(name: str) -> str:
    """One line for a dropdown: name, task, dimension, rate and the weights' status as it is now.

    The status is read afresh on every call (a few file checks, never a download): "ready",
    "downloads on first use (25 MB)", "needs <file> in <folder>"; opt-in models add
    "opt-in: licence not stated".
    """
    m = get_model(name)
    i = m.info
    st = m.status()
    status = "ready" if st.ready else (st.short or st.message)
    if i.opt_in:
        status += " · opt-in: licence not stated"
    return f"{i.name} — {i.task}, {i.dim}-d, {i.sample_rate / 1000:g} kHz, {status}"


__all__ = ["EmbeddingModel", "ModelInfo", "ModelStatus", "WeightsNotInstalled", "l2_normalize",
           "get_model", "model_names", "describe"]
