"""What one running simulator owns: its config, buckets, fault dice, counters.

Everything here lives on the app's event loop and is touched only from it,
so nothing needs a lock. Time is read through two seams given to
`deluge_nb.sim.make_app`: ``clock`` (monotonic seconds; the buckets, storms
and ``admitted_times`` use it) and ``wall_clock`` (Unix seconds; only the
RFC 3339 reset stamps of the Anthropic headers use it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from deluge_nb.sim._bucket import Bucket, Clock
from deluge_nb.sim._config import SimConfig
from deluge_nb.sim._faults import FaultInjector

logger = logging.getLogger(__name__)

CountMessages = Callable[[Sequence[Mapping[str, Any]], str | None], int]
CountText = Callable[[str, str | None], int]

FORMATS = ("openai", "anthropic")


class ShuttingDown(Exception):
    """Raised inside a sleeping handler when the server starts to stop."""


class Stats:
    """Counters of one server; see `SimServer.stats` for the fields.

    Parameters
    ----------
    fault_kinds : sequence of str
        The configured fault kinds; each starts at 0 in ``faults``.
    """

    def __init__(self, fault_kinds: Sequence[str] = ()) -> None:
        self._fault_kinds = tuple(fault_kinds)
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter; requests in flight stay counted as in flight."""
        self.requests = 0
        self.ok = 0
        self.rate_limited = 0
        self.disconnected = 0
        self.errors_by_status: dict[int, int] = {}
        self.max_in_flight = self.in_flight
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.admitted_times: list[float] = []
        self.faults = dict.fromkeys(self._fault_kinds, 0)
        self.storms = 0
        self.by_format = {
            name: {"requests": 0, "ok": 0, "rate_limited": 0} for name in FORMATS
        }

    def arrived(self, wire_format: str) -> None:
        """Count a request that has just arrived."""
        self.requests += 1
        self.by_format[wire_format]["requests"] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def answered(self, wire_format: str, status: int) -> None:
        """Count an answer that is not a complete 200 reply."""
        if status == 429:
            self.rate_limited += 1
            self.by_format[wire_format]["rate_limited"] += 1
        if status != 200:
            by_status = self.errors_by_status
            by_status[status] = by_status.get(status, 0) + 1

    def succeeded(
        self, wire_format: str, input_tokens: int, output_tokens: int, when: float
    ) -> None:
        """Count a complete 200 reply that arrived `when` seconds after start."""
        self.ok += 1
        self.by_format[wire_format]["ok"] += 1
        self.prompt_tokens += input_tokens
        self.completion_tokens += output_tokens
        self.admitted_times.append(when)

    def injected(self, kind: str, *, started_storm: bool = False) -> None:
        """Count one injected fault."""
        self.faults[kind] = self.faults.get(kind, 0) + 1
        if started_storm:
            self.storms += 1

    def snapshot(self) -> dict[str, Any]:
        """Return a copy of the counters as plain data."""
        return {
            "requests": self.requests,
            "ok": self.ok,
            "rate_limited": self.rate_limited,
            "errors_by_status": dict(sorted(self.errors_by_status.items())),
            "disconnected": self.disconnected,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "admitted_times": sorted(self.admitted_times),
            "faults": dict(sorted(self.faults.items())),
            "storms": self.storms,
            "by_format": {name: dict(c) for name, c in self.by_format.items()},
        }


class SimState:
    """Everything one running app owns: config, buckets, fault dice, counters.

    Only touched from the app's event loop.

    Attributes
    ----------
    requests_bucket, tokens_bucket : Bucket or None
        The OpenAI endpoint's limits (None when unlimited).
    anthropic_requests_bucket, input_tokens_bucket, output_tokens_bucket
        The Anthropic endpoint's limits (None when unlimited).
    """

    def __init__(
        self,
        config: SimConfig,
        clock: Clock,
        wall_clock: Clock,
        count_messages: CountMessages,
        count_text: CountText,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall_clock = wall_clock
        self.count_messages = count_messages
        self.count_text = count_text
        self.stats = Stats(list(config.faults))
        self.faults = FaultInjector(config)
        self.started_at: float | None = None
        self.stopping = asyncio.Event()
        self.requests_bucket = self._bucket(config.requests_per_minute)
        self.tokens_bucket = self._bucket(config.tokens_per_minute)
        self.anthropic_requests_bucket = self._bucket(config.requests_per_minute)
        self.input_tokens_bucket = self._bucket(config.input_tokens_per_minute)
        self.output_tokens_bucket = self._bucket(config.output_tokens_per_minute)

    def _bucket(self, limit: float | None) -> Bucket | None:
        if limit is None:
            return None
        return Bucket(limit, self.config.burst_seconds, self.clock)

    def _rebucket(self, old: Bucket | None, limit: float | None) -> Bucket | None:
        if limit is None or old is None:
            return self._bucket(limit)
        old.reconfigure(limit, self.config.burst_seconds)
        return old

    def set_limits(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        input_tokens_per_minute: float | None,
        output_tokens_per_minute: float | None,
    ) -> None:
        """Replace every limit; a bucket that stays limited keeps its fill."""
        config = dataclasses.replace(
            self.config,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            input_tokens_per_minute=input_tokens_per_minute,
            output_tokens_per_minute=output_tokens_per_minute,
        )
        self.requests_bucket = self._rebucket(self.requests_bucket, requests_per_minute)
        self.tokens_bucket = self._rebucket(self.tokens_bucket, tokens_per_minute)
        self.anthropic_requests_bucket = self._rebucket(
            self.anthropic_requests_bucket, requests_per_minute
        )
        self.input_tokens_bucket = self._rebucket(
            self.input_tokens_bucket, input_tokens_per_minute
        )
        self.output_tokens_bucket = self._rebucket(
            self.output_tokens_bucket, output_tokens_per_minute
        )
        self.config = config
        logger.info(
            "sim limits now %s requests/min, %s tokens/min, %s input tokens/min, "
            "%s output tokens/min",
            requests_per_minute,
            tokens_per_minute,
            input_tokens_per_minute,
            output_tokens_per_minute,
        )

    def since_start(self, when: float) -> float:
        """Seconds from server start to `when` (a clock reading)."""
        return when - (self.started_at if self.started_at is not None else when)

    async def sleep(self, seconds: float) -> None:
        """Sleep, but raise `ShuttingDown` if the server starts stopping.

        ``math.inf`` sleeps until the handler is cancelled (its client went
        away) or the server stops.
        """
        if seconds <= 0:
            return
        timeout = None if math.isinf(seconds) else seconds
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout)
        except asyncio.TimeoutError:
            return
        raise ShuttingDown


STATE_KEY = web.AppKey("deluge_nb_sim_state", SimState)
