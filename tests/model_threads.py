"""Load and embed models in threads of one fresh process, as the app does; write what happened as JSON.

    python tests/model_threads.py OUT.json [--together] [--watchdog SECONDS] MODEL [MODEL ...]

Each model is loaded (weights from ``WEIGHTS_DIR``, compiled on first use) and embeds two clips in
a thread of its own. By default the threads run one after the other, each ending before the next
starts (the app's start-up warm-up thread, then a request thread); with ``--together`` they all
start at once. A fresh interpreter matters: which thread first imports Paddle, and whether it still
lives, is part of what is tested.

With ``--watchdog S`` a process still running after S seconds writes every thread's stack to
``OUT.json.stacks`` and exits with code 1, so a hang is reported with where it hung (standard error
may be held back by :func:`search_core.models.quiet.quiet_native_output` at that moment).
"""
from __future__ import annotations

import faulthandler
import json
import sys
import threading
import time
import traceback

import numpy as np

import search_core  # noqa: F401  (sets OMP_NUM_THREADS before paddle is imported)
from search_core.models import get_model


def clips(rate: int) -> list[np.ndarray]:
    """Two different 2 s clips: a voiced-like harmonic tone and noise."""
    t = np.arange(2 * rate) / rate
    tone = 0.3 * np.sign(np.sin(2 * np.pi * 140 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    noise = 0.1 * np.random.default_rng(1).standard_normal(len(t))
    return [tone.astype(np.float32), noise.astype(np.float32)]


def embed_one(name: str, results: dict) -> None:
    t0 = time.perf_counter()
    try:
        model = get_model(name)
        emb = model.embed(clips(model.info.sample_rate))
        run = getattr(model, "_run", None)
        results[name] = {
            "ok": True, "thread": threading.current_thread().name, "shape": list(emb.shape),
            "finite": bool(np.isfinite(emb).all()), "norms": np.linalg.norm(emb, axis=1).tolist(),
            "cosine": float(emb[0] @ emb[1]), "dim": model.info.dim,
            "compiled": None if run is None else bool(getattr(run, "compiled", False)),
            "seconds": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - reported to the test
        results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                         "traceback": traceback.format_exc()}


def main(argv: list[str]) -> None:
    out, *rest = argv
    together = "--together" in rest
    rest = [a for a in rest if a != "--together"]
    if "--watchdog" in rest:
        i = rest.index("--watchdog")
        stacks = open(out + ".stacks", "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        faulthandler.dump_traceback_later(float(rest[i + 1]), file=stacks, exit=True)
        del rest[i:i + 2]
    names = rest
    results: dict = {}
    threads = [threading.Thread(target=embed_one, args=(n, results), name=f"load-{n}") for n in names]
    for th in threads:
        th.start()
        if not together:
            th.join()
    for th in threads:
        th.join()
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1:])
