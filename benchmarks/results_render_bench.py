"""How long the Search tab takes to turn 20 hits into its outputs (players, pictures, HTML).

    .venv/bin/python benchmarks/results_render_bench.py

Builds a throwaway library (mfcc_stats) of short clips and long recordings (indexed as segments),
searches with k=20 and times: the engine's search, app.search_outputs on a cold thumbnail cache,
on a warm cache, and the old way (one hit after another, each file decoded and resampled).
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("SEARCH_CORE_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np
import soundfile as sf

import app
from search_core import audio as audio_mod
from search_core import plots
from search_core.config import get_settings
from search_core.service import LibraryService

MODEL = "mfcc_stats"


def make_library(root: Path, n_short: int = 30, n_long: int = 5, long_s: float = 300.0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_short + n_long):
        secs = long_s if i >= n_short else 5.0
        t = np.arange(int(secs * 16000)) / 16000
        y = 0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t) + 0.05 * rng.standard_normal(len(t))
        p = root / f"clip_{i:02d}.wav"
        sf.write(str(p), y.astype(np.float32), 16000, subtype="PCM_16")
        paths.append(p)
    return paths


def old_way(res) -> None:
    """What the handler did before: every hit decoded (and resampled) in turn, twice for segments."""
    q = res.query
    plots.waveform_image(q.samples, 640, 80)
    plots.spectrogram_image(q.samples, q.sample_rate, 640, 120)
    for h in res.hits:
        if h.is_segment:
            a = audio_mod.load(h.path, None, max_bytes=1 << 62, max_duration_s=1e9)
            a.samples[int(h.start_s * a.sample_rate):int(h.end_s * a.sample_rate)]
        a = audio_mod.load(h.path, 8000, max_bytes=1 << 62, max_duration_s=1e9)
        plots.waveform_image(a.samples, 480, 64)
        app.hit_html(h)


def timed(fn, *args, repeat: int = 5) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        settings = replace(get_settings(), data_dir=data, milvus_uri=str(data / "milvus.db"),
                           database_url=f"sqlite:///{data / 'metadata.sqlite'}", library_dir=data / "library")
        svc = LibraryService(settings)
        try:
            clips = make_library(tmp / "in")
            svc.ingest_files(clips, MODEL)
            query = clips[3]
            res = svc.search(query, MODEL, 20)
            segs = sum(h.is_segment for h in res.hits)
            t_search = timed(lambda: svc.search(query, MODEL, 20))
            old_way(res)  # warm-up: imports, librosa's first-call compilation, OS file cache
            t_old = timed(old_way, res, repeat=3)

            def cold():
                app._envelope.cache_clear()
                app._thumbnail_png.cache_clear()
                app.search_outputs(res, MODEL, tmp / "render")

            t_cold = timed(cold, repeat=3)
            t_warm = timed(app.search_outputs, res, MODEL, tmp / "render")
            t_http = through_http(svc, query)
        finally:
            svc.close()
    print(f"{len(res.hits)} hits ({segs} segments of 300 s recordings), engine search {t_search * 1000:.0f} ms")
    print(f"search_outputs: cold cache {t_cold * 1000:.0f} ms, warm cache {t_warm * 1000:.0f} ms; "
          f"old sequential decode {t_old * 1000:.0f} ms")
    print(f"/search through HTTP (gradio_client, k=20, warm): {t_http * 1000:.0f} ms")


def through_http(svc, query: Path) -> float:
    """Median time of the /search endpoint, end to end (handler + Gradio's encoding + transfer)."""
    from gradio_client import Client, handle_file

    demo = app.build_app(svc)
    demo.queue().launch(prevent_thread_lock=True, quiet=True,
                        **app.launch_kwargs(svc.settings, app.Access()))
    try:
        client = Client(demo.local_url, verbose=False, download_files=False)  # a browser fetches lazily
        n_inputs = len(client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/search"]
                       ["parameters"])
        args = [handle_file(str(query)), MODEL, 20] + [""] * (n_inputs - 3)
        client.predict(*args, api_name="/search")
        return timed(lambda: client.predict(*args, api_name="/search"))
    finally:
        demo.close()


if __name__ == "__main__":
    main()
