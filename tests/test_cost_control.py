"""Never pay twice, never overspend: cache, resume, dedupe, estimate, budget."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from deluge_nb import register_model
from deluge_nb._cache import ResponseCache
from deluge_nb._job import CANCELLED
from deluge_nb._tokens import count_message_tokens
from deluge_nb.sim import serve

ECHO = "[[sim:echo]]"


@pytest.fixture(scope="module")
def sim() -> Iterator[object]:
    with serve() as server:
        register_model(
            "sim-cost",
            base_url=server.base_url,
            tokenizer="o200k_base",
            context_window=4096,
            input_price=1.0,
            output_price=4.0,
        )
        yield server


@pytest.fixture(autouse=True)
def _fresh_stats(sim: object) -> None:
    sim.reset_stats()  # type: ignore[attr-defined]


def requests_sent(sim: object) -> int:
    return int(sim.stats()["requests"])  # type: ignore[attr-defined]


def test_k12_interrupted_job_resumes_with_only_the_missing_rows(
    sim: object, tmp_path: Path
) -> None:
    df = pd.DataFrame({"text": [f"row {i}" for i in range(10)]})
    options = {
        "prompt": ECHO + "[[sim:sleep=1]]{text}",
        "max_concurrent_requests": 1,
        "progress": None,
        "cache": tmp_path / "cache.sqlite3",
    }
    job = df.deluge.submit("sim-cost", **options)
    time.sleep(3.5)
    job.cancel()
    partial = job.result(timeout=5)
    assert partial["response"].notna().sum() == 3
    assert (partial["error"].dropna() == CANCELLED).all()

    with ResponseCache(tmp_path / "cache.sqlite3") as cache:
        assert len(cache) == 3  # written as they finished

    sim.reset_stats()  # type: ignore[attr-defined]
    full = df.deluge.complete("sim-cost", **options)
    assert requests_sent(sim) == 7
    assert full["response"].tolist() == [f"row {i}" for i in range(10)]
    assert full["cached"].tolist() == [True] * 3 + [False] * 7
    assert (full.loc[full["cached"], "cost_usd"] == 0).all()
    assert full.attrs["deluge"]["cached"] == 3


def test_cache_hits_spend_no_rate_limit_budget(sim: object, tmp_path: Path) -> None:
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    cache = ResponseCache(tmp_path / "c.sqlite3")
    try:
        first = df.deluge.complete(
            "sim-cost", prompt=ECHO + "{text}", progress=None, cache=cache
        )
        limiter_before = first.attrs["deluge"]
        sim.reset_stats()  # type: ignore[attr-defined]
        from deluge_nb import LLMClient

        client = LLMClient("sim-cost", cache=cache, progress=None)
        used_before = client.limiter.snapshot().requests_last_minute
        results = client.process_prompts_sync([ECHO + t for t in "abc"])
        assert requests_sent(sim) == 0
        assert client.limiter.snapshot().requests_last_minute == used_before
        assert [r.response for r in results] == ["a", "b", "c"]
        assert all(r.cached and r.cost_usd == 0 for r in results)
        assert limiter_before["cost_usd"] > 0
    finally:
        cache.close()


def test_k20_a_million_rows_of_ten_texts_send_ten_requests(sim: object) -> None:
    texts = [f"Classify item {i % 10}" for i in range(1_000_000)]
    df = pd.DataFrame({"text": texts})

    estimate = df.deluge.estimate("sim-cost", prompt=ECHO + "{text}", cache=False)
    assert requests_sent(sim) == 0
    assert estimate.requests == 10 and estimate.duplicate_rows == 999_990
    assert estimate.input_tokens > 0 and estimate.cost_usd > 0

    frame_bytes = df.memory_usage(deep=True).sum()
    tracemalloc.start()
    try:
        out = df.deluge.complete(
            "sim-cost", prompt=ECHO + "{text}", progress=None, cache=False
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert requests_sent(sim) == 10
    assert out["response"].iloc[123_457] == "Classify item 7"
    assert out["cost_usd"].sum() == pytest.approx(out.attrs["deluge"]["cost_usd"])
    assert int(out["cached"].sum()) == 999_990
    # Proportional to the frame: a task or a result object per row would
    # cost several hundred bytes a row on top.
    assert peak < 8 * frame_bytes, (peak, frame_bytes)


def test_identical_requests_in_a_job_are_sent_once(sim: object) -> None:
    df = pd.DataFrame({"text": ["x", "y", "x", "x", "y"]})
    out = df.deluge.complete(
        "sim-cost", prompt=ECHO + "{text}", progress=None, cache=False
    )
    assert requests_sent(sim) == 2
    assert out["response"].tolist() == ["x", "y", "x", "x", "y"]
    assert out["cached"].tolist() == [False, False, True, True, True]
    assert (out["cost_usd"].iloc[2:] == 0).all() and (
        out["cost_usd"].iloc[:2] > 0
    ).all()


def test_budget_stops_sending_before_it_is_exceeded(sim: object) -> None:
    prompt = ECHO + "{text}"
    df = pd.DataFrame({"text": [f"item number {i}" for i in range(40)]})
    estimate = df.deluge.estimate("sim-cost", prompt=prompt, max_tokens=50, cache=False)
    per_row_worst = estimate.cost_usd / 40
    # Replies cost far less than their worst case, so more than 3 rows fit,
    # but not all 40.
    budget = per_row_worst * 3

    out = df.deluge.complete(
        "sim-cost",
        prompt=prompt,
        max_tokens=50,
        max_cost=budget,
        progress=None,
        cache=False,
        max_concurrent_requests=4,
    )
    spent = out.attrs["deluge"]["cost_usd"]
    assert spent <= budget
    assert out["cost_usd"].sum() == pytest.approx(spent)
    unsent = out["error"].str.contains("max_cost", na=False)
    assert unsent.sum() > 0
    assert out["response"].notna().sum() + unsent.sum() == 40
    assert out["response"].notna().sum() > 3  # settled rows free their reservation
    assert requests_sent(sim) == out["response"].notna().sum()


def test_estimate_matches_a_hand_computation(sim: object, tmp_path: Path) -> None:
    texts = ["one two three", "four five", "one two three", None, "word " * 5000]
    df = pd.DataFrame({"text": texts})
    est = df.deluge.estimate(
        "sim-cost",
        prompt="{text}",
        max_tokens=100,
        max_requests_per_minute=60,
        max_tokens_per_minute=600,
        cache=tmp_path / "e.sqlite3",
    )
    tokens = [
        count_message_tokens([{"role": "user", "content": t}], "o200k_base")
        for t in ("one two three", "four five")
    ]
    assert est.total_rows == 5 and est.missing_rows == 1
    assert est.requests == 2 and est.duplicate_rows == 1
    assert est.never_fit_rows == 1  # over the 4096-token window
    assert est.input_tokens == sum(tokens)
    assert est.output_tokens == 200
    hand = sum(t * 1.0 / 1e6 + 100 * 4.0 / 1e6 for t in tokens)
    assert est.cost_usd == pytest.approx(hand)
    assert est.batch_cost_usd is None  # a custom endpoint has no batch price
    # 2 requests at 60/min vs sum(tokens)+200 tokens at 600/min.
    assert est.wall_time_s == pytest.approx(60 * max(2 / 60, (sum(tokens) + 200) / 600))
    assert est.rows["input_tokens"].tolist() == [tokens[0], tokens[1], 0, 0, 0]
    assert est.rows["duplicate"].tolist() == [False, False, True, False, False]
    assert "context window" in est.rows["problem"].iloc[4]
    assert requests_sent(sim) == 0

    # After a run, the same rows are reported as cached.
    df.iloc[:3].deluge.complete(
        "sim-cost",
        prompt="{text}",
        max_tokens=100,
        progress=None,
        cache=tmp_path / "e.sqlite3",
    )
    again = df.deluge.estimate(
        "sim-cost", prompt="{text}", max_tokens=100, cache=tmp_path / "e.sqlite3"
    )
    assert again.cached_rows == 3 and again.requests == 0 and again.cost_usd == 0


def test_dry_run_is_estimate(sim: object) -> None:
    df = pd.DataFrame({"text": ["a"]})
    est = df.deluge.complete(
        "sim-cost", prompt="{text}", max_tokens=50, dry_run=True, cache=False
    )
    assert est.requests == 1 and requests_sent(sim) == 0
    assert "requests to send" in repr(est)
    assert "<table" in est._repr_html_()
