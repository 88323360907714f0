"""What every scenario shares: the simulator process, the prompts, the ideal.

The simulator runs in a child process (``python -m deluge_nb.sim``), one
fresh server per client run, so every client starts with full buckets and
its own counters, and the server's CPU work never competes with the
client's for one interpreter lock: on a two-core machine the client gets
one core and the server the other.
"""

from __future__ import annotations

import json
import os
import platform
import re
import selectors
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Seconds a fresh simulator may take to print its URL (imports, tiktoken).
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServerSpec:
    """The simulated server of one scenario (see ``deluge_nb.sim.SimConfig``)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    latency_s: float = 0.0
    latency_per_output_token_s: float = 0.0
    rate_limit_headers: bool = True
    faults: dict[str, float] = field(default_factory=dict)
    fault_retry_after_s: float = 1.0
    seed: int = 0

    def argv(self) -> list[str]:
        """Command-line arguments of ``python -m deluge_nb.sim`` for this spec."""
        args = ["--port", "0", "--seed", str(self.seed)]
        if self.requests_per_minute is not None:
            args += ["--rpm", repr(self.requests_per_minute)]
        if self.tokens_per_minute is not None:
            args += ["--tpm", repr(self.tokens_per_minute)]
        args += ["--latency", repr(self.latency_s)]
        args += ["--latency-per-token", repr(self.latency_per_output_token_s)]
        if not self.rate_limit_headers:
            args.append("--no-rate-limit-headers")
        for kind, rate in self.faults.items():
            args += ["--fault", f"{kind}={rate!r}"]
        args += ["--fault-retry-after", repr(self.fault_retry_after_s)]
        return args

    def without_faults(self) -> ServerSpec:
        """The same server with no injected faults (the clean re-run)."""
        return ServerSpec(
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            latency_s=self.latency_s,
            latency_per_output_token_s=self.latency_per_output_token_s,
            rate_limit_headers=self.rate_limit_headers,
            fault_retry_after_s=self.fault_retry_after_s,
            seed=self.seed,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "latency_s": self.latency_s,
            "latency_per_output_token_s": self.latency_per_output_token_s,
            "rate_limit_headers": self.rate_limit_headers,
            "faults": dict(self.faults),
            "fault_retry_after_s": self.fault_retry_after_s,
            "seed": self.seed,
        }


class SimProcess:
    """One simulator in a child process; a context manager.

    Parameters
    ----------
    spec
        The server's settings.
    """

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "deluge_nb.sim", *spec.argv()],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            self.base_url = self._read_url()
        except BaseException:
            self.close()
            raise
        self.root_url = self.base_url.removesuffix("/v1")

    def _read_url(self) -> str:
        assert self._proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            if not selector.select(_START_TIMEOUT_S):
                raise RuntimeError("the simulator did not start in time")
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http"):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        return line

    def stats(self) -> dict[str, Any]:
        """The server's counters (``GET /stats``)."""
        with urllib.request.urlopen(f"{self.root_url}/stats", timeout=10) as reply:
            stats: dict[str, Any] = json.load(reply)
        return stats

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- prompts -------------------------------------------------------------

INSTRUCTION = "Summarize this passage from the Python documentation in one sentence:"
PASSAGE_WORDS = 30


def corpus_words() -> list[str]:
    """The words of the Python reference's help topics (``pydoc_data``).

    Shipped with every CPython, so the prompts are real English prose about
    Python, the same on every run of one Python version, with no download.
    """
    from pydoc_data.topics import topics

    text = " ".join(topics[name] for name in sorted(topics))
    return re.sub(r"\s+", " ", text).split(" ")


def make_prompts(n: int, *, tag_rows: bool = False) -> list[str]:
    """``n`` distinct prompts of about 40 words, deterministic.

    Each is the instruction plus a 30-word window of the corpus; windows
    start evenly spread over it and never repeat, so no two prompts are
    equal (deluge_nb sends identical prompts once, which would flatter it). ``tag_rows``
    puts the row number first, so a misplaced answer is easy to spot.
    """
    words = corpus_words()
    span = len(words) - PASSAGE_WORDS
    stride = span // n
    if stride < 1:
        raise ValueError(f"the corpus has too few words for {n} distinct prompts")
    prompts, seen = [], set()
    for row in range(n):
        start = row * stride
        passage = " ".join(words[start : start + PASSAGE_WORDS])
        # Some topics repeat a paragraph of another: step past repeats.
        while passage in seen:
            start = (start + 1) % span
            passage = " ".join(words[start : start + PASSAGE_WORDS])
        seen.add(passage)
        prefix = f"[row {row:05d}] " if tag_rows else ""
        prompts.append(f"{prefix}{INSTRUCTION} {passage}")
    return prompts


# -- the ideal -----------------------------------------------------------


def ideal_seconds(spec: ServerSpec, rows: int, stats: dict[str, Any]) -> float | None:
    """The fastest any client could finish ``rows`` on this server.

    ``max(rows / rpm, (prompt + completion tokens) / tpm)`` minutes, the
    tokens being what the server itself counted for its complete replies
    (``/stats``), plus the latency of one average reply (the last request
    still has to be answered). None for a server without limits.
    """
    rpm, tpm = spec.requests_per_minute, spec.tokens_per_minute
    if rpm is None and tpm is None:
        return None
    tokens = stats["prompt_tokens"] + stats["completion_tokens"]
    minutes = max(
        rows / rpm if rpm else 0.0,
        tokens / tpm if tpm else 0.0,
    )
    mean_output = stats["completion_tokens"] / stats["ok"] if stats["ok"] else 0.0
    latency = spec.latency_s + spec.latency_per_output_token_s * mean_output
    return minutes * 60.0 + latency


def floor_seconds(spec: ServerSpec, rows: int, stats: dict[str, Any]) -> float | None:
    """Like `ideal_seconds`, but spending the server's full starting buckets.

    The simulator's buckets start full with ``burst_seconds`` of refill, so
    a client that sends that much at once can beat the ideal by up to that
    long; this is the time such a client needs. For the JSON only: the
    table's ratio is against `ideal_seconds`.
    """
    from deluge_nb.sim import SimConfig

    rpm, tpm = spec.requests_per_minute, spec.tokens_per_minute
    if rpm is None and tpm is None:
        return None
    burst_minutes = SimConfig().burst_seconds / 60.0
    tokens = stats["prompt_tokens"] + stats["completion_tokens"]
    minutes = max(
        (rows - rpm * burst_minutes) / rpm if rpm else 0.0,
        (tokens - tpm * burst_minutes) / tpm if tpm else 0.0,
        0.0,
    )
    mean_output = stats["completion_tokens"] / stats["ok"] if stats["ok"] else 0.0
    latency = spec.latency_s + spec.latency_per_output_token_s * mean_output
    return minutes * 60.0 + latency


# -- the machine ---------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the table was measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("deluge_nb", "lm-deluge", "openai", "aiohttp", "tiktoken"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "deluge_nb"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if dirty:
            commit += " + uncommitted changes in deluge_nb/"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "deluge_nb_commit": commit,
        "versions": versions,
    }
