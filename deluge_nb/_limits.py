"""The limiter: requests/min, tokens/min and concurrency, shared per API key.

Each per-minute limit is one ``RateBucket`` with two rules, both of which
must allow a request before it is sent:

- pacing: the limit's rate spread evenly, with at most ``burst_seconds`` of
  it available at once (a generic cell rate algorithm: ``tat`` is the time
  at which everything admitted so far would have been paid off at the
  limit's rate). Providers enforce per-minute limits over much shorter
  windows, so a full minute of budget at start-up would draw 429s.
- the window: the amounts admitted in the last 60 s, plus this one, stay
  within the limit, so no rolling minute ever exceeds it.

A request reserves its estimated input tokens plus ``max_tokens`` (what
OpenAI counts on arrival); ``Limiter.release`` corrects the reservation to
the actual usage. A 429 pauses every request on the limiter until the
server's wait has passed. All time is read through ``clock``, so the rate
rules can be tested by moving a fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
DEFAULT_BURST_S = 1.0
DEFAULT_MAX_CONCURRENT = 64


class _Entry:
    """One admission still inside the window; its amount can be corrected."""

    __slots__ = ("at", "amount", "live")

    def __init__(self, at: float, amount: float) -> None:
        self.at = at
        self.amount = amount
        self.live = False  # True while counted in its bucket's window


class RateBucket:
    """One per-minute limit: pacing plus a rolling 60 s window.

    Parameters
    ----------
    per_minute
        The limit; ``math.inf`` for none.
    burst_seconds
        How many seconds' worth of the rate may go out at once.
    """

    def __init__(self, per_minute: float, burst_seconds: float = DEFAULT_BURST_S):
        if per_minute <= 0:
            raise ValueError(f"a per-minute limit must be > 0, got {per_minute!r}")
        if burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be > 0, got {burst_seconds!r}")
        self.per_minute = float(per_minute)
        self.burst_seconds = float(burst_seconds)
        self._tat = -math.inf
        self._entries: deque[_Entry] = deque()
        self._in_window = 0.0

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.per_minute)

    def fits(self, amount: float) -> bool:
        """Whether ``amount`` can ever be admitted under this limit."""
        return amount <= self.per_minute

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` may be admitted; 0 means now."""
        if self.unlimited or amount <= 0:
            return 0.0
        if not self.fits(amount):
            return math.inf

        rate = self.per_minute / WINDOW_S
        cost = amount / rate
        tolerance = max(self.burst_seconds, cost)
        pacing = max(self._tat, now) + cost - now - tolerance

        self._expire(now)
        window = 0.0
        excess = self._in_window + amount - self.per_minute
        if excess > 1e-9:
            for entry in self._entries:
                excess -= entry.amount
                if excess <= 1e-9:
                    window = entry.at + WINDOW_S - now
                    break
        return max(0.0, pacing, window)

    def take(self, amount: float, now: float) -> _Entry:
        """Admit ``amount`` now; the returned entry can be corrected later."""
        entry = _Entry(now, float(amount))
        if self.unlimited:
            return entry
        self._tat = max(self._tat, now) + amount * WINDOW_S / self.per_minute
        entry.live = True
        self._entries.append(entry)
        self._in_window += amount
        return entry

    def correct(self, entry: _Entry, actual: float, now: float) -> None:
        """Replace a reservation's amount with what was really used."""
        delta = actual - entry.amount
        if delta == 0 or self.unlimited:
            entry.amount = float(actual)
            return
        self._expire(now)
        if entry.live:
            self._in_window += delta
        self._tat += delta * WINDOW_S / self.per_minute
        entry.amount = float(actual)

    def used(self, now: float) -> float:
        """The amount admitted in the last 60 s."""
        self._expire(now)
        return max(0.0, self._in_window)

    def set_limit(self, per_minute: float) -> None:
        if per_minute <= 0:
            raise ValueError(f"a per-minute limit must be > 0, got {per_minute!r}")
        self.per_minute = float(per_minute)

    def _expire(self, now: float) -> None:
        while self._entries and self._entries[0].at + WINDOW_S <= now:
            entry = self._entries.popleft()
            entry.live = False
            self._in_window -= entry.amount
        if not self._entries:
            self._in_window = 0.0


@dataclass
class Reservation:
    """What one admitted request holds until it is released."""

    tokens: float
    request_entry: _Entry
    token_entry: _Entry
    released: bool = False


@dataclass(frozen=True)
class LimiterSnapshot:
    """The limiter's state at one moment, for gauges and stats."""

    max_requests_per_minute: float
    max_tokens_per_minute: float
    max_concurrent_requests: int
    requests_last_minute: float
    tokens_last_minute: float
    in_flight: int
    paused_for_s: float
    reason: str


class Limiter:
    """Admission control for one API key and model group.

    Parameters
    ----------
    max_requests_per_minute, max_tokens_per_minute
        Per-minute limits; ``math.inf`` for none.
    max_concurrent_requests
        Requests in flight at once.
    burst_seconds
        Seconds' worth of each rate that may go out at once.
    clock
        Monotonic time in seconds; the one seam through which time is read.
    """

    def __init__(
        self,
        max_requests_per_minute: float,
        max_tokens_per_minute: float,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT,
        *,
        burst_seconds: float = DEFAULT_BURST_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = RateBucket(max_requests_per_minute, burst_seconds)
        self.tokens = RateBucket(max_tokens_per_minute, burst_seconds)
        self._check_concurrency(max_concurrent_requests)
        self.max_concurrent_requests = int(max_concurrent_requests)
        self.clock = clock
        self.in_flight = 0
        self._paused_until = -math.inf
        self._pause_reason = ""
        self._reason = "idle"
        # Created lazily on the loop that uses the limiter.
        self._admission: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- admission -------------------------------------------------------

    def check_fits(self, tokens: float) -> str | None:
        """Why a request of ``tokens`` can never be admitted, or None."""
        if not self.tokens.fits(tokens):
            return (
                f"request needs {tokens:.0f} tokens (input estimate + max_tokens) "
                f"but the limit is {self.tokens.per_minute:.0f} tokens/min; it "
                "can never be sent. Lower max_tokens or shorten the prompt."
            )
        return None

    async def acquire(self, tokens: float) -> Reservation:
        """Wait until a request of ``tokens`` may be sent, then reserve it.

        Requests are admitted in arrival order. Raises ``ValueError`` at once
        for a request that can never fit.
        """
        problem = self.check_fits(tokens)
        if problem:
            raise ValueError(problem)

        admission, changed = self._primitives()
        async with admission:
            while True:
                now = self.clock()
                wait = self._wait_time(tokens, now)
                if wait == 0.0:
                    reservation = Reservation(
                        tokens=tokens,
                        request_entry=self.requests.take(1, now),
                        token_entry=self.tokens.take(tokens, now),
                    )
                    self.in_flight += 1
                    self._reason = "sending"
                    return reservation

                changed.clear()
                try:
                    await asyncio.wait_for(
                        changed.wait(), None if math.isinf(wait) else wait
                    )
                except asyncio.TimeoutError:
                    pass

    def release(
        self, reservation: Reservation, actual_tokens: float | None = None
    ) -> None:
        """Free the request's slot; correct its tokens to ``actual_tokens``.

        Safe to call more than once; only the first call counts.
        """
        if reservation.released:
            return
        reservation.released = True
        self.in_flight -= 1
        if actual_tokens is not None:
            self.tokens.correct(reservation.token_entry, actual_tokens, self.clock())
        self._notify()

    def pause(self, seconds: float, reason: str = "429") -> None:
        """Hold every request on this limiter for ``seconds`` from now."""
        until = self.clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._pause_reason = reason
            logger.info("pausing requests for %.1f s after %s", seconds, reason)
        self._notify()

    def set_limits(
        self,
        *,
        max_requests_per_minute: float | None = None,
        max_tokens_per_minute: float | None = None,
        max_concurrent_requests: int | None = None,
    ) -> None:
        """Change limits while requests run; the next admission uses them."""
        if max_requests_per_minute is not None:
            self.requests.set_limit(max_requests_per_minute)
        if max_tokens_per_minute is not None:
            self.tokens.set_limit(max_tokens_per_minute)
        if max_concurrent_requests is not None:
            self._check_concurrency(max_concurrent_requests)
            self.max_concurrent_requests = int(max_concurrent_requests)
        self._notify()

    def snapshot(self) -> LimiterSnapshot:
        now = self.clock()
        return LimiterSnapshot(
            max_requests_per_minute=self.requests.per_minute,
            max_tokens_per_minute=self.tokens.per_minute,
            max_concurrent_requests=self.max_concurrent_requests,
            requests_last_minute=self.requests.used(now),
            tokens_last_minute=self.tokens.used(now),
            in_flight=self.in_flight,
            paused_for_s=max(0.0, self._paused_until - now),
            reason=self._reason,
        )

    # -- internals -------------------------------------------------------

    def _wait_time(self, tokens: float, now: float) -> float:
        """0 if a request may go now, else seconds (inf: until notified)."""
        paused = self._paused_until - now
        if paused > 0:
            self._reason = f"cooling down {paused:.0f} s after {self._pause_reason}"
            return paused
        if self.in_flight >= self.max_concurrent_requests:
            self._reason = "waiting on concurrency"
            return math.inf
        request_wait = self.requests.wait_time(1, now)
        token_wait = self.tokens.wait_time(tokens, now)
        if request_wait == 0.0 and token_wait == 0.0:
            return 0.0
        self._reason = (
            "waiting on requests/min"
            if request_wait >= token_wait
            else "waiting on tokens/min"
        )
        return max(request_wait, token_wait)

    def _primitives(self) -> tuple[asyncio.Lock, asyncio.Event]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._admission is None or self._changed is None:
            self._loop = loop
            self._admission = asyncio.Lock()
            self._changed = asyncio.Event()
        return self._admission, self._changed

    def _notify(self) -> None:
        """Wake the request waiting for admission; callable from any thread."""
        loop, changed = self._loop, self._changed
        if loop is None or changed is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            changed.set()
        else:
            loop.call_soon_threadsafe(changed.set)

    @staticmethod
    def _check_concurrency(value: int) -> None:
        if value < 1:
            raise ValueError(f"max_concurrent_requests must be >= 1, got {value!r}")


# -- the process-wide registry ------------------------------------------

_registry: dict[tuple[str, str, str], Limiter] = {}
_registry_lock = threading.Lock()


def limiter_key(base_url: str, api_key: str | None, group: str) -> tuple[str, str, str]:
    """The key one budget is shared under; the API key enters only hashed."""
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]
    return (base_url, digest, group)


def get_limiter(
    key: tuple[str, str, str],
    *,
    max_requests_per_minute: float,
    max_tokens_per_minute: float,
    max_concurrent_requests: int,
    explicit: bool,
) -> Limiter:
    """The limiter for ``key``, created on first use.

    A later call with ``explicit`` limits (given by the user rather than
    taken from the registry) updates the shared limiter to them.
    """
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = Limiter(
                max_requests_per_minute,
                max_tokens_per_minute,
                max_concurrent_requests,
            )
            _registry[key] = limiter
        elif explicit:
            limiter.set_limits(
                max_requests_per_minute=max_requests_per_minute,
                max_tokens_per_minute=max_tokens_per_minute,
                max_concurrent_requests=max_concurrent_requests,
            )
        return limiter
