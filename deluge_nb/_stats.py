"""One job's counters, and the snapshot every progress view reads."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ._limits import Limiter, LimiterSnapshot


@dataclass(frozen=True)
class StatsSnapshot:
    """A job's progress at one moment."""

    state: str
    total: int
    done: int
    succeeded: int
    failed: int
    skipped: int
    cached: int
    retries: int
    rate_limited: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    elapsed_s: float
    eta_s: float | None
    limiter: LimiterSnapshot
    max_cost_usd: float | None = None

    def summary(self) -> dict[str, object]:
        """The totals, as plain values (for ``DataFrame.attrs``)."""
        return {
            "state": self.state,
            "rows": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "cancelled": self.total - self.done,
            "cached": self.cached,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "max_cost_usd": self.max_cost_usd,
            "elapsed_s": self.elapsed_s,
        }

    @property
    def remaining(self) -> int:
        return self.total - self.done

    def line(self) -> str:
        """One line of text, for logs and the plain progress view."""
        lim = self.limiter
        eta = "?" if self.eta_s is None else f"{self.eta_s:.0f}s"
        return (
            f"{self.done}/{self.total} rows ({self.failed} errors, "
            f"{self.retries} retries, {self.rate_limited} 429s) | "
            f"{lim.requests_last_minute:.0f}/{_fmt_limit(lim.max_requests_per_minute)} "
            f"req/min | {lim.tokens_last_minute:.0f}/"
            f"{_fmt_limit(lim.max_tokens_per_minute)} tok/min | "
            f"${self.cost_usd:.4f} | {self.elapsed_s:.0f}s elapsed, ETA {eta} | "
            f"{'paused' if self.state == 'paused' else lim.reason}"
        )


def _fmt_limit(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.0f}"


@dataclass
class JobStats:
    """Mutable counters, updated on the engine loop as rows finish."""

    total: int
    limiter: Limiter
    state: str = "running"
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    cached: int = 0
    retries: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    max_cost_usd: float | None = None

    def snapshot(self) -> StatsSnapshot:
        end = self.finished if self.finished is not None else time.monotonic()
        elapsed = end - self.started
        sent_done = self.done - self.skipped - self.cached
        eta: float | None = None
        if self.done >= self.total:
            eta = 0.0
        elif sent_done > 0 and elapsed > 0:
            eta = (self.total - self.done) * elapsed / sent_done
        return StatsSnapshot(
            state=self.state,
            total=self.total,
            done=self.done,
            succeeded=self.succeeded,
            failed=self.failed,
            skipped=self.skipped,
            cached=self.cached,
            retries=self.retries,
            rate_limited=self.rate_limited,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=self.cost_usd,
            elapsed_s=elapsed,
            eta_s=eta,
            limiter=self.limiter.snapshot(),
            max_cost_usd=self.max_cost_usd,
        )
