"""The retry policy, as tables of real and junk values."""

from __future__ import annotations

import random

import pytest

from deluge_nb._retry import (
    BACKOFF_CAP_S,
    MAX_SERVER_WAIT_S,
    backoff_delay,
    is_retryable_status,
    parse_go_duration,
    parse_retry_after,
    retry_delay,
    usable_server_wait,
)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, True),
        (409, True),
        (422, False),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (529, True),
    ],
)
def test_which_statuses_are_retried(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


@pytest.mark.parametrize(
    ("status", "header", "retryable"),
    [
        (400, "true", True),
        (500, "false", False),
        (429, "FALSE", False),
        (500, "maybe", True),
    ],
)
def test_x_should_retry_overrides_the_status(
    status: int, header: str, retryable: bool
) -> None:
    assert is_retryable_status(status, {"x-should-retry": header}) is retryable


NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "30"}, 30.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": " 2 "}, 2.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "20", "retry-after": "1"}, 0.02),
        ({"retry-after": "Thu, 01 Jan 2026 00:00:12 GMT"}, 12.0),
        ({"retry-after": "Wed, 31 Dec 2025 23:59:00 GMT"}, 0.0),
        ({"retry-after": ""}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "junk", "retry-after": "3"}, 3.0),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(headers, NOW) == (
        None if seconds is None else pytest.approx(seconds)
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("12ms", 0.012),
        ("6m0s", 360.0),
        ("1m30.5s", 90.5),
        ("2h", 7200.0),
        ("0s", 0.0),
        ("500us", 0.0005),
        ("", None),
        ("-1", None),
        ("0", None),
        ("abc", None),
        ("1x", None),
        ("s", None),
        (None, None),
    ],
)
def test_parse_go_duration(text: str | None, seconds: float | None) -> None:
    assert parse_go_duration(text) == (
        None if seconds is None else pytest.approx(seconds)
    )


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    firsts = [backoff_delay(1, rng) for _ in range(200)]
    assert min(firsts) >= 0.25 and max(firsts) <= 0.5
    assert len(set(firsts)) > 150  # jittered, not one value for the herd
    assert all(backoff_delay(3, rng) <= 2.0 for _ in range(50))
    assert all(backoff_delay(30, rng) <= BACKOFF_CAP_S for _ in range(50))
    assert max(backoff_delay(30, rng) for _ in range(200)) > BACKOFF_CAP_S * 0.9


def test_server_wait_wins_unless_it_is_absurd() -> None:
    rng = random.Random(1)
    assert retry_delay(1, {"retry-after": "30"}, rng=rng) == 30.0
    too_long = str(MAX_SERVER_WAIT_S * 10)
    assert retry_delay(1, {"retry-after": too_long}, rng=rng) <= 0.5


@pytest.mark.parametrize(
    ("seconds", "usable"),
    [(None, None), (0.0, 0.0), (30.0, 30.0), (MAX_SERVER_WAIT_S, MAX_SERVER_WAIT_S)]
    + [(MAX_SERVER_WAIT_S + 1, None), (86_400.0, None), (1e9, None)],
)
def test_usable_server_wait(seconds: float | None, usable: float | None) -> None:
    assert usable_server_wait(seconds) == usable
