"""Re-running a fully cached job: wall time and peak memory of complete().

Builds a frame of ``--rows`` distinct review prompts, fills a response
cache in a temporary folder with an answer for each (the keys come from
the same planning code a job uses, so the re-run finds them all), then, in
a fresh process, times ``df.deluge.complete(...)`` over the whole frame,
which must send nothing. Reports wall time, rows per second, tracemalloc
peak and max RSS as a markdown table. Points the model at a closed port:
a single request sent would fail loudly.

    python benchmarks/cached_job.py --rows 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

import deluge_nb  # noqa: E402
from deluge_nb import LLMClient  # noqa: E402
from deluge_nb._cache import ResponseCache  # noqa: E402
from deluge_nb._frame import render_prompts  # noqa: E402
from deluge_nb._plan import plan_requests  # noqa: E402
from deluge_nb._types import Completion  # noqa: E402

WORDS = (
    "battery screen camera price delivery quality sound charger case support "
    "fast slow cheap bright broke works great terrible okay returned refund "
    "love hate daily gift size colour light heavy durable flimsy app update"
).split()
TEMPLATE = "Label the sentiment of this review and give one reason: {review}"
NOWHERE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens


def make_frame(rows: int) -> pd.DataFrame:
    rng = random.Random(7)
    reviews = [
        f"#{i} " + " ".join(rng.choices(WORDS, k=rng.randint(12, 40)))
        for i in range(rows)
    ]
    return pd.DataFrame({"review": reviews, "stars": [i % 5 + 1 for i in range(rows)]})


def register() -> None:
    deluge_nb.register_model(
        "bench-cached",
        base_url=NOWHERE,
        tokenizer="o200k_base",
        input_price=0.15,
        output_price=0.60,
    )


def fill(path: Path, rows: int) -> float:
    register()
    frame = make_frame(rows)
    client = LLMClient("bench-cached", max_tokens=64, cache=False, progress=None)
    started = time.perf_counter()
    plan = plan_requests(client, render_prompts(frame, TEMPLATE))
    answer = "positive: the customer praises the battery and the delivery"
    items = [
        (
            r.key,
            Completion(
                response=answer,
                input_tokens=r.input_estimate,
                output_tokens=12,
                cost_usd=1e-5,
                model="bench-cached",
                finish_reason="stop",
                attempts=1,
            ),
        )
        for r in plan.requests
    ]
    with ResponseCache(path) as cache:
        cache.put_many(items)
    return time.perf_counter() - started


def rerun(path: Path, rows: int) -> None:
    register()
    frame = make_frame(rows)
    options = {
        "prompt": TEMPLATE,
        "max_tokens": 64,
        "cache": path,
        "progress": None,
        "max_attempts": 1,
    }
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # First pass timed alone: tracemalloc slows Python down several times.
    started = time.perf_counter()
    out = frame.deluge.complete("bench-cached", **options)
    elapsed = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert out["cached"].all() and out["error"].isna().all(), "a row was not cached"
    sent = out.attrs["deluge"]["rows"] - out.attrs["deluge"]["cached"]
    del out

    # Second pass for memory: what the re-run allocates at its peak.
    tracemalloc.start()
    frame.deluge.complete("bench-cached", **options)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    frame_mib = frame.memory_usage(deep=True).sum() / 2**20
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| rows (all cached) | {rows:,} |")
    print(f"| complete() wall time | {elapsed:.2f} s ({rows / elapsed:,.0f} rows/s) |")
    print(f"| requests sent | {sent} |")
    print(f"| tracemalloc peak during complete() | {peak / 2**20:.1f} MiB |")
    print(f"| input frame (deep) | {frame_mib:.1f} MiB |")
    print(
        f"| max RSS after the first pass | {rss:.0f} MiB "
        f"({rss_before:.0f} MiB before) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rerun", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rerun:
        rerun(args.rerun, args.rows)
        return

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cache.sqlite3"
        took = fill(path, args.rows)
        print(
            f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}; cache filled in {took:.1f} s\n"
        )
        subprocess.run(
            [sys.executable, __file__, "--rows", str(args.rows), "--rerun", str(path)],
            check=True,
        )


if __name__ == "__main__":
    main()
