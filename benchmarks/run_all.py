"""Run every benchmark in turn (``make benchmark``); each writes benchmarks/results/*.json.

Long: on 2 cores the 100k-vector scale run alone takes tens of minutes (index builds).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = [
    ["bench_embed.py"],
    ["bench_ingest.py", "--model", "mfcc_stats", "--rounds", "2"],
    ["bench_ingest.py", "--model", "aisfx", "--limit", "48"],
    ["bench_scale.py", "--model", "aisfx", "--sizes", "10000", "100000", "--curve", "--rss"],
    ["plots.py"],
]

if __name__ == "__main__":
    for step in STEPS:
        print("==>", " ".join(step), flush=True)
        subprocess.run([sys.executable, str(HERE / step[0]), *step[1:]], check=True, cwd=HERE.parent)
