"""Helpers shared by the benchmark scripts: timing, percentiles, memory, generated clips, results."""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p95/mean in milliseconds."""
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "mean_ms": round(float(ms.mean()), 2), "n": int(len(ms))}


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MB, or None off Linux."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """This process' current resident set size in MB."""
    now = _proc_status_mb("VmRSS")
    return float("nan") if now is None else now


def peak_rss_mb() -> float:
    """This process' peak resident set size in MB: VmHWM, the high-water mark of its own memory.

    Not ``getrusage().ru_maxrss``: Linux carries that over from the parent's image across
    fork + exec, so a child started by a big benchmark process reported the parent's size (a
    3.35 GB "peak" for an app process that never exceeded 1.4 GB, BENCHMARKS.md).
    """
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def synthetic_clip(seed: int, seconds: float = 5.0, rate: int = 16000) -> np.ndarray:
    """A deterministic 5 s test sound: a few harmonic tones with an envelope plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    y = np.zeros_like(t)
    for _ in range(3):
        f = rng.uniform(100, 3000)
        y += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28))
    y *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t) ** 2
    y += 0.05 * rng.standard_normal(len(t))
    return (0.4 * y / np.max(np.abs(y))).astype(np.float32)


def write_clips(folder: Path, n: int, seconds: float = 5.0, rate: int = 16000, offset: int = 0) -> list[Path]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"clip_{offset + i:05d}.wav"
        if not p.exists():
            sf.write(str(p), synthetic_clip(offset + i, seconds, rate), rate, subtype="PCM_16")
        out.append(p)
    return out


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2))
    return path


def eager_twin(model):
    """A second instance of ``model`` whose network runs eagerly, or None if it has no compiled path."""
    if not getattr(getattr(model, "_run", None), "compiled", False):
        return None
    old = os.environ.get("PADDLE_COMPILE")
    os.environ["PADDLE_COMPILE"] = "0"
    try:
        twin = type(model)().load()
    finally:
        if old is None:
            del os.environ["PADDLE_COMPILE"]
        else:
            os.environ["PADDLE_COMPILE"] = old
    assert not twin._run.compiled
    return twin
