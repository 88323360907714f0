"""How fast a re-run finds its rows in the response cache, and at what memory.

Fills a cache in a temporary directory with ``--rows`` rows (short review
prompts, 20-60 word answers), then, in a fresh Python process with a new
``ResponseCache`` object, looks up every key with ``get_many`` and reports
wall time, ``tracemalloc`` peak and the process's max RSS as a markdown
table. The file was just written, so the OS page cache is warm: this
measures deluge_nb and SQLite, not the disk.

    python benchmarks/cache_rerun.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deluge_nb._cache import ResponseCache, request_key  # noqa: E402
from deluge_nb._types import Completion  # noqa: E402

WORDS = (
    "battery screen camera price delivery quality sound charger case support "
    "fast slow cheap bright broke works great terrible okay returned refund "
    "love hate daily gift size colour light heavy durable flimsy app update "
    "setup easy hard noisy quiet warm cold fits loose tight worth waste again"
).split()
ANSWER_WORDS = (
    "the review is mostly positive negative neutral because customer praises "
    "complains about mentions product delivery price quality but also notes "
    "that overall sentiment leans towards satisfied disappointed mixed with "
    "some reservations strong clear explicit implicit tone language suggests"
).split()
SYSTEM = "You label product reviews. Answer with a label and one reason."


def build_rows(n: int, seed: int = 7) -> list[tuple[dict[str, Any], Completion]]:
    """``n`` distinct requests and the completions they would get back."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        review = " ".join(rng.choices(WORDS, k=rng.randint(12, 40)))
        request: dict[str, Any] = {
            "provider": "openai",
            "base_url": "https://api.openai.com/v1",
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Review #{i}: {review}"},
            ],
            "params": {"temperature": 0.0, "max_tokens": 128},
        }
        answer = " ".join(rng.choices(ANSWER_WORDS, k=rng.randint(20, 60)))
        output_tokens = int(len(answer.split()) * 1.3)
        input_tokens = 30 + int(len(review.split()) * 1.3)
        completion = Completion(
            response=answer.capitalize() + ".",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=(input_tokens * 0.15 + output_tokens * 0.6) / 1e6,
            model="gpt-4o-mini-2024-07-18",
            finish_reason="stop",
            latency_s=round(rng.uniform(0.3, 2.5), 3),
            attempts=1,
        )
        rows.append((request, completion))
    return rows


def max_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def read_phase() -> None:
    """The measured part, run in a fresh process; prints JSON.

    Reads the cache path and the keys file from stdin, so the process can
    be started before the parent grows: on Linux a child's max RSS starts
    at its parent's size when it was spawned.
    """
    path = Path(sys.stdin.readline().strip())
    keys = Path(sys.stdin.readline().strip()).read_text().split()
    rss_before = max_rss_mib()

    start = time.perf_counter()
    with ResponseCache(path) as cache:
        opened = time.perf_counter()
        found = cache.get_many(keys)
    wall = time.perf_counter() - start
    lookup = time.perf_counter() - opened
    rss_after = max_rss_mib()
    hits = len(found)
    del found

    # tracemalloc slows allocation, so its peak comes from a second run.
    with ResponseCache(path) as cache:
        tracemalloc.start()
        found = cache.get_many(keys)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert len(found) == hits

    print(
        json.dumps(
            {
                "keys": len(keys),
                "hits": hits,
                "wall_s": wall,
                "lookup_s": lookup,
                "traced_peak_mib": traced_peak / 2**20,
                "rss_before_mib": rss_before,
                "rss_after_mib": rss_after,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--read-phase", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.read_phase:
        read_phase()
        return

    reader = subprocess.Popen(
        [sys.executable, __file__, "--read-phase"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    with tempfile.TemporaryDirectory(prefix="deluge-cache-bench-") as tmp:
        path = Path(tmp) / "responses.sqlite3"
        rows = build_rows(args.rows)

        start = time.perf_counter()
        keys = [request_key(**request) for request, _ in rows]
        key_s = time.perf_counter() - start

        start = time.perf_counter()
        with ResponseCache(path) as cache:
            cache.put_many(list(zip(keys, (c for _, c in rows), strict=True)))
        fill_s = time.perf_counter() - start
        size_mib = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20

        keys_file = Path(tmp) / "keys.txt"
        keys_file.write_text("\n".join(keys))
        out, _ = reader.communicate(f"{path}\n{keys_file}\n")
        if reader.returncode:
            raise SystemExit(f"the reading process failed ({reader.returncode})")
        read = json.loads(out)

    n = args.rows
    print(
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.machine()}"
    )
    print()
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| rows in cache | {n:,} |")
    print(f"| file size after fill | {size_mib:.1f} MiB |")
    print(f"| request_key x {n:,} | {key_s:.2f} s ({key_s / n * 1e6:.1f} us/row) |")
    print(f"| put_many of {n:,} rows (one transaction) | {fill_s:.2f} s |")
    print(
        f"| get_many of {read['keys']:,} keys, new process and object | "
        f"{read['wall_s']:.2f} s (lookup alone {read['lookup_s']:.2f} s) |"
    )
    print(f"| rows found | {read['hits']:,} |")
    print(f"| tracemalloc peak during get_many | {read['traced_peak_mib']:.1f} MiB |")
    print(
        f"| max RSS of the reading process | {read['rss_after_mib']:.1f} MiB "
        f"({read['rss_before_mib']:.1f} MiB before get_many) |"
    )


if __name__ == "__main__":
    main()
