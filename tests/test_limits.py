"""The limiter's rules, on a clock the tests move by hand."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from deluge_nb._headers import parse_rate_limit_headers
from deluge_nb._limits import (
    WINDOW_S,
    WINDOW_SLACK_S,
    Limiter,
    NeverFitsError,
    RateBucket,
)


def admit_all(
    bucket: RateBucket, amounts: list[float], start: float = 0.0
) -> list[float]:
    """Admit each amount as soon as the bucket allows; return admission times."""
    now = start
    times = []
    for amount in amounts:
        now += bucket.wait_time(amount, now)
        assert bucket.wait_time(amount, now) == 0.0
        bucket.take(amount, now)
        times.append(now)
    return times


def max_in_rolling_window(times: list[float], amounts: list[float]) -> float:
    worst = 0.0
    pairs = list(zip(times, amounts, strict=True))
    for t in times:
        worst = max(worst, sum(a for s, a in pairs if t <= s < t + WINDOW_S))
    return worst


def test_k08_no_more_than_limit_in_any_rolling_minute_first_included() -> None:
    bucket = RateBucket(60, burst_seconds=1.0)
    times = admit_all(bucket, [1.0] * 100)

    assert max_in_rolling_window(times, [1.0] * 100) <= 60
    # The first minute is not a burst: paced at about one a second.
    assert sum(1 for t in times if t < 10.0) <= 11
    # And the limit is used: 100 requests take about 100 s, not much more.
    assert times[-1] == pytest.approx(99.0, abs=1.5)


@pytest.mark.parametrize("burst_seconds", [0.5, 1.0, 5.0])
def test_startup_burst_is_bounded_by_burst_window(burst_seconds: float) -> None:
    bucket = RateBucket(6000, burst_seconds=burst_seconds)  # 100 per second
    times = admit_all(bucket, [1.0] * 2000)

    at_once = sum(1 for t in times if t == 0.0)
    assert at_once == pytest.approx(100 * burst_seconds, abs=1)
    assert max_in_rolling_window(times, [1.0] * 2000) <= 6000


def test_k07_tokens_reserved_before_sending_and_corrected_after() -> None:
    # TPM 1000; three prompts of ~200 tokens with max_tokens=400 each.
    bucket = RateBucket(1000, burst_seconds=1.0)
    first = bucket.take(600, 0.0)

    assert bucket.wait_time(600, 0.0) > 0  # only one starts in the first window
    assert bucket.wait_time(600, 0.0) <= WINDOW_S + WINDOW_SLACK_S

    # The first response used 200 in + 30 out: the reservation shrinks.
    bucket.correct(first, 230, now=2.0)
    assert bucket.used(2.0) == 230
    wait = bucket.wait_time(600, 2.0)
    later = 2.0 + wait
    bucket.take(600, later)
    assert bucket.used(later) == 830
    # Without the correction the second request would wait for the window.
    assert wait < 40


def test_request_larger_than_the_limit_never_fits() -> None:
    bucket = RateBucket(1000)
    assert not bucket.fits(1001)
    assert math.isinf(bucket.wait_time(1001, 0.0))


def test_window_forgets_after_sixty_seconds_and_a_little() -> None:
    bucket = RateBucket(100, burst_seconds=60)
    bucket.take(100, 0.0)
    assert bucket.wait_time(1, 30.0) > 0
    # Admitted is not arrived: the server may have seen it a little later.
    assert bucket.wait_time(1, 60.0) == pytest.approx(WINDOW_SLACK_S)
    assert bucket.wait_time(1, 60.0 + WINDOW_SLACK_S) == 0.0
    assert bucket.used(60.0 + WINDOW_SLACK_S) == 0


def test_limits_change_on_the_next_admission() -> None:
    bucket = RateBucket(60, burst_seconds=1.0)
    admit_all(bucket, [1.0] * 5)
    slow = bucket.wait_time(1, 4.0)
    bucket.set_limit(600)
    fast = bucket.wait_time(1, 4.0)
    assert fast < slow


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError):
        RateBucket(0)
    with pytest.raises(ValueError):
        Limiter(60, 1000, 0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_k09_concurrency_slots_come_back_on_every_path() -> None:
    limiter = Limiter(math.inf, math.inf, 2)

    async def work(fail: bool) -> None:
        reservation = await limiter.acquire(10)
        try:
            await asyncio.sleep(0.01 if fail else 10)
            if fail:
                raise RuntimeError("boom")
        finally:
            limiter.release(reservation, 5)

    failing = asyncio.ensure_future(work(fail=True))
    hanging = asyncio.ensure_future(work(fail=False))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert limiter.in_flight == 2
    with pytest.raises(RuntimeError):
        await failing
    hanging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hanging
    assert limiter.in_flight == 0

    # Two new requests both start at once.
    first, second = await asyncio.wait_for(
        asyncio.gather(limiter.acquire(1), limiter.acquire(1)), timeout=1
    )
    assert limiter.in_flight == 2
    limiter.release(first)
    limiter.release(second)
    limiter.release(second)  # a second release is a no-op
    assert limiter.in_flight == 0


async def test_cancelled_waiter_takes_no_slot() -> None:
    limiter = Limiter(math.inf, math.inf, 1)
    held = await limiter.acquire(1)
    waiter = asyncio.ensure_future(limiter.acquire(1))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release(held)
    assert limiter.in_flight == 0
    again = await asyncio.wait_for(limiter.acquire(1), timeout=1)
    limiter.release(again)


async def test_pause_holds_every_request_until_it_passes() -> None:
    clock = FakeClock()
    limiter = Limiter(math.inf, math.inf, 10, clock=clock)
    limiter.pause(30.0, "429")
    waiter = asyncio.ensure_future(limiter.acquire(1))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    assert "cooling down 30 s after 429" in limiter.snapshot().reason

    clock.now += 30.0
    limiter.set_limits()  # wakes the waiter, which rereads the clock
    reservation = await asyncio.wait_for(waiter, timeout=1)
    limiter.release(reservation)


async def test_slider_change_wakes_a_waiting_request() -> None:
    limiter = Limiter(math.inf, math.inf, 1)
    held = await limiter.acquire(1)
    waiter = asyncio.ensure_future(limiter.acquire(1))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert limiter.snapshot().reason == "waiting on concurrency"
    limiter.set_limits(max_concurrent_requests=2)
    second = await asyncio.wait_for(waiter, timeout=1)
    assert limiter.in_flight == 2
    limiter.release(held)
    limiter.release(second)


async def test_acquire_rejects_a_request_that_can_never_fit() -> None:
    limiter = Limiter(60, 1000, 4)
    with pytest.raises(ValueError, match="can never be sent"):
        await limiter.acquire(5000)
    assert limiter.in_flight == 0


@pytest.mark.parametrize(
    "lower",
    [
        lambda lim: lim.set_limits(max_tokens_per_minute=1000),  # a slider
        lambda lim: lim.observe(  # a server's headers
            parse_rate_limit_headers({"x-ratelimit-limit-tokens": "1000"}, 0.0), 0.0
        ),
    ],
    ids=["set_limits", "headers"],
)
async def test_a_waiting_request_fails_when_a_limit_drops_below_it(
    lower: Callable[[Limiter], None],
) -> None:
    limiter = Limiter(math.inf, 10_000, 1, explicit=False)
    limiter.probing = False
    held = await limiter.acquire(1500)
    big = asyncio.ensure_future(limiter.acquire(1500))
    small = asyncio.ensure_future(limiter.acquire(500))
    await asyncio.sleep(0.01)
    assert not big.done()

    lower(limiter)
    # The big one can never go now: it fails instead of blocking the queue.
    with pytest.raises(NeverFitsError, match="can never be sent"):
        await asyncio.wait_for(big, timeout=1)
    limiter.release(held, 100)
    limiter.release(await asyncio.wait_for(small, timeout=5))
    assert limiter.in_flight == 0


@pytest.mark.parametrize("now", [2456.512345, 1e6 + 0.1, 37.3])
def test_a_request_costing_more_than_the_burst_is_admitted_exactly_when_due(
    now: float,
) -> None:
    # 108 tokens at 600/min take 10.8 s of rate, more than the 1 s burst.
    # An idle bucket must say 0, not a rounding crumb that is never reached.
    bucket = RateBucket(600, burst_seconds=1.0)
    bucket.take(39, now - 30.0)
    assert bucket.wait_time(108, now) == 0.0


def test_a_limit_lowered_after_a_big_job_waits_no_longer_than_the_window() -> None:
    bucket = RateBucket(1_000_000, burst_seconds=1.0)
    for i in range(40):
        bucket.take(300, i * 0.1)  # 12,000 tokens in 4 s
    bucket.set_limit(600)  # 12,000 tokens are 20 minutes of the new rate
    assert bucket.wait_time(110, 10.0) <= 3.9 + WINDOW_S + WINDOW_SLACK_S - 10.0 + 1e-6
    assert bucket.wait_time(110, 64.0 + WINDOW_SLACK_S) == 0.0  # the minute emptied
