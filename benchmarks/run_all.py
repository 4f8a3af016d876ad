"""Run every benchmark in turn (``make benchmark``); each writes benchmarks/results/*.json.

About 15 minutes on an idle 2-core machine (the 100k-vector scale run is most of it).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = [
    ["bench_embed.py", "--models", "mfcc_stats", "aisfx", "resemblyzer", "yamnet"],
    ["bench_ingest.py", "--model", "aisfx", "--limit", "211", "--tag", "_onnx"],
    ["bench_ingest.py", "--model", "mfcc_stats", "--rounds", "2", "--tag", "_idle"],
    ["bench_scale.py", "--model", "aisfx", "--sizes", "10000", "100000", "--queries", "100", "--wavs", "20",
     "--curve", "--ivf-nlist", "1024", "--rss"],
    ["bench_scale.py", "--model", "aisfx", "--sizes", "10000", "--curve", "--ivf-nlist", "0", "--tag", "_10k"],
    ["load_test.py", "--model", "aisfx", "--requests", "100", "--concurrency", "1,4,8", "--clips", "200",
     "--time-limit", "60", "--write-md"],
    ["plots.py"],
]

if __name__ == "__main__":
    for step in STEPS:
        print("==>", " ".join(step), flush=True)
        subprocess.run([sys.executable, str(HERE / step[0]), *step[1:]], check=True, cwd=HERE.parent)
