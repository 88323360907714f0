"""The engine against the simulator over real HTTP: limits, retries, failures."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pandas as pd
import pytest

import deluge_nb
from deluge_nb import LLMClient, register_model
from deluge_nb.sim import serve


@pytest.fixture(scope="module")
def sim() -> Iterator[object]:
    with serve() as server:
        register_model(
            "sim-client",
            base_url=server.base_url,
            tokenizer="o200k_base",
            context_window=8192,
        )
        yield server


@pytest.fixture(autouse=True)
def _fresh_stats(sim: object) -> None:
    sim.reset_stats()  # type: ignore[attr-defined]


def echo(text: str, *directives: str) -> str:
    return "".join(f"[[sim:{d}]]" for d in ("echo", *directives)) + text


def test_k01_sync_call_from_a_running_loop(sim: object) -> None:
    async def cell() -> list[str | None]:
        # As in a Jupyter cell: a loop is running in this thread.
        assert asyncio.get_running_loop().is_running()
        client = LLMClient("sim-client", progress=None)
        return [
            c.response
            for c in client.process_prompts_sync([echo("a"), echo("b"), echo("c")])
        ]

    assert asyncio.run(cell()) == ["a", "b", "c"]


@pytest.mark.parametrize("patch", ["nest_asyncio", "uvloop"])
def test_k02_user_patched_asyncio_before_import(patch: str) -> None:
    setup = {
        "nest_asyncio": "import nest_asyncio\nnest_asyncio.apply()\n",
        "uvloop": (
            "import uvloop\nasyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
        ),
    }[patch]
    script = (
        "import asyncio\n"
        + setup
        + textwrap.dedent(
            """
            policy_before = type(asyncio.get_event_loop_policy())
            import pandas as pd
            import deluge_nb
            from deluge_nb.sim import serve
            assert type(asyncio.get_event_loop_policy()) is policy_before

            async def cell():
                with serve() as sim:
                    deluge_nb.register_model("s", base_url=sim.base_url)
                    df = pd.DataFrame({"t": ["one", "two", "three"]})
                    out = df.deluge.complete(
                        "s", prompt="[[sim:echo]]{t}", progress=None
                    )
                    return list(out["response"])

            print(asyncio.run(cell()))
            assert type(asyncio.get_event_loop_policy()) is policy_before
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['one', 'two', 'three']"


def test_k10_invalid_request_is_not_retried(sim: object) -> None:
    client = LLMClient("sim-client", progress=None, max_attempts=5)
    started = time.monotonic()
    ok, bad = client.process_prompts_sync([echo("fine"), echo("bad", "status=400")])
    assert time.monotonic() - started < 1.0
    assert ok.response == "fine" and ok.error is None
    assert bad.response is None
    assert bad.attempts == 1
    assert bad.error is not None and bad.error.startswith("HTTP 400:")
    assert "sim" in bad.error.lower()  # the server's own message is kept
    assert sim.stats()["requests"] == 2  # type: ignore[attr-defined]


def test_k11_hung_server_times_out_retries_then_fails_the_row(sim: object) -> None:
    client = LLMClient("sim-client", progress=None, timeout=0.5, max_attempts=2)
    first, hung, third = client.process_prompts_sync(
        [echo("first"), echo("hung", "hang"), echo("third")]
    )
    assert (first.response, third.response) == ("first", "third")
    assert hung.response is None
    assert hung.attempts == 2
    assert hung.error is not None and "no response within 0.5 s" in hung.error
    assert sim.stats()["requests"] == 4  # type: ignore[attr-defined]


def test_default_timeout_is_finite() -> None:
    assert 0 < LLMClient("sim-client").timeout < 600


def test_server_errors_are_retried_up_to_max_attempts(sim: object) -> None:
    client = LLMClient("sim-client", progress=None, max_attempts=3)
    (result,) = client.process_prompts_sync([echo("x", "status=503")])
    assert result.attempts == 3
    assert result.error is not None and "HTTP 503" in result.error
    assert sim.stats()["requests"] == 3  # type: ignore[attr-defined]


def test_429_pauses_every_request_on_the_key(sim: object) -> None:
    register_model("sim-pause", base_url=sim.base_url, tokenizer="o200k_base")  # type: ignore[attr-defined]
    client = LLMClient(
        "sim-pause", progress=None, max_attempts=2, max_concurrent_requests=1
    )
    prompts = [echo("first", "status=429", "retry_after=1")] + [
        echo(str(i)) for i in range(4)
    ]
    results = client.process_prompts_sync(prompts)

    stats = sim.stats()  # type: ignore[attr-defined]
    assert stats["rate_limited"] == 2  # both attempts of the first row
    admitted = stats["admitted_times"]
    assert len(admitted) == 4
    # The 429 came first; nobody else was admitted during its 1 s pause.
    assert min(admitted) >= 1.0
    assert results[0].error is not None and "429" in results[0].error
    assert [r.response for r in results[1:]] == ["0", "1", "2", "3"]


def test_an_absurd_retry_after_is_not_honoured(sim: object) -> None:
    # A server asking for a day (or junk like 1e9 s) would hold every
    # request on the key that long; backoff is used instead.
    client = LLMClient(
        "sim-client", progress=None, max_attempts=2, max_requests_per_minute=6000
    )
    started = time.monotonic()
    first, second = client.process_prompts_sync(
        [echo("x", "status=429", "retry_after=86400"), echo("fine")]
    )
    assert time.monotonic() - started < 5.0
    assert first.error is not None and "429" in first.error and first.attempts == 2
    assert second.response == "fine"
    # The key pauses for a first backoff step, not for the row's growing one.
    assert client.limiter.snapshot().paused_for_s <= 0.5


def test_600_rpm_60k_tpm_200_rows_get_no_429(sim: object) -> None:
    words = " ".join(["word"] * 40)
    with serve(requests_per_minute=600, tokens_per_minute=60_000) as limited:
        register_model("sim-limited", base_url=limited.base_url, tokenizer="o200k_base")
        client = LLMClient(
            "sim-limited",
            max_requests_per_minute=600,
            max_tokens_per_minute=60_000,
            max_tokens=100,
            progress=None,
        )
        results = client.process_prompts_sync([f"{i}: {words}" for i in range(200)])
        stats = limited.stats()

    assert stats["rate_limited"] == 0
    assert stats["ok"] == 200
    assert all(r.error is None and r.response for r in results)
    admitted = sorted(stats["admitted_times"])
    for i, t in enumerate(admitted):
        assert sum(1 for s in admitted[i:] if s < t + 60) <= 600


def test_limits_persist_and_are_shared_between_calls(sim: object) -> None:
    first = LLMClient("sim-client", max_requests_per_minute=1234)
    second = LLMClient("sim-client")
    assert second.limiter is first.limiter
    assert second.limiter.requests.per_minute == 1234


def test_several_models_share_one_budget(sim: object) -> None:
    register_model("sim-a", base_url=sim.base_url)  # type: ignore[attr-defined]
    register_model("sim-b", base_url=sim.base_url)  # type: ignore[attr-defined]
    client = LLMClient(["sim-a", "sim-b"], progress=None)
    results = client.process_prompts_sync([echo(str(i)) for i in range(4)])
    assert [r.model for r in results] == ["sim-a", "sim-b", "sim-a", "sim-b"]
    assert [r.response for r in results] == ["0", "1", "2", "3"]


def test_errors_raise_is_opt_in(sim: object) -> None:
    client = LLMClient("sim-client", progress=None, errors="raise")
    with pytest.raises(deluge_nb.APIStatusError) as caught:
        client.process_prompts_sync([echo("bad", "status=400")])
    assert caught.value.status == 400
    assert caught.value.row == 0 and caught.value.attempt == 1


def test_errors_raise_stops_the_requests_in_flight(sim: object) -> None:
    client = LLMClient(
        "sim-client", progress=None, errors="raise", max_requests_per_minute=6000
    )
    slow = [echo(f"slow {i}", "sleep=5") for i in range(4)]
    started = time.monotonic()
    with pytest.raises(deluge_nb.APIStatusError):
        client.process_prompts_sync([*slow, echo("bad", "status=400")])
    # Not after the slow rows' 5 s: they are abandoned, not waited for.
    assert time.monotonic() - started < 3.0
    assert sim.stats()["ok"] == 0  # type: ignore[attr-defined]


def test_rows_fail_when_the_servers_limit_is_below_them() -> None:
    # Registry defaults (1M tokens/min) let the first request go; the
    # server's headers then say 10k, which 15k max_tokens can never fit.
    with serve(tokens_per_minute=10_000, context_window=65_536) as small:
        register_model("sim-small-tpm", base_url=small.base_url, tokenizer="o200k_base")
        job = LLMClient("sim-small-tpm", max_tokens=15_000, progress=None).submit(
            [f"hello {i}" for i in range(4)]
        )
        results = job.result(timeout=30)

    assert all(r.response is None for r in results)
    # The first row has the server's word for it; the rest never leave.
    assert results[0].error is not None and "Request too large" in results[0].error
    for r in results[1:]:
        assert r.error is not None and "can never be sent" in r.error
        assert "10000 tokens/min (as the server's rate-limit headers" in r.error


def test_a_limit_lowered_during_a_retry_fails_the_row_not_the_job(
    sim: object,
) -> None:
    register_model("sim-lowered", base_url=sim.base_url)  # type: ignore[attr-defined]
    client = LLMClient(
        "sim-lowered", max_tokens=500, max_attempts=3, progress=None, cache=False
    )
    job = client.submit([echo(f"a{i}", "status=500") for i in range(3)])
    time.sleep(0.2)  # the first attempts fail; retries back off
    LLMClient("sim-lowered", max_tokens_per_minute=300, progress=None)
    results = job.result(timeout=30)

    assert job.stats.state == "failed"
    for r in results:
        assert r.error is not None and "can never be sent" in r.error
        assert not r.error.startswith("cancelled")


def test_api_key_never_reaches_logs_reprs_or_errors(
    sim: object, caplog: pytest.LogCaptureFixture
) -> None:
    canary = "sk-canary-4c1d2e3f"
    caplog.set_level(logging.DEBUG)
    client = LLMClient("sim-client", api_key=canary, progress=None, max_attempts=2)
    results = client.process_prompts_sync(
        [echo("x", "status=400"), echo("y", "status=500")]
    )
    frame = pd.DataFrame({"p": [echo("z", "status=401")]}).deluge.complete(
        "sim-client", prompt="p", api_key=canary, progress=None
    )
    texts = [r.getMessage() for r in caplog.records] + [repr(client), frame.to_string()]
    texts += [str(r) for r in results]
    assert caplog.records  # the decisions were logged
    assert not any(canary in t for t in texts)


@pytest.mark.parametrize(
    ("model", "variable"),
    [("gpt-4o-mini", "OPENAI_API_KEY"), ("claude-haiku-4-5", "ANTHROPIC_API_KEY")],
)
def test_a_missing_key_fails_before_sending_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, model: str, variable: str
) -> None:
    monkeypatch.delenv(variable, raising=False)
    client = LLMClient(model, progress=None, cache=False)
    started = time.monotonic()
    with pytest.raises(deluge_nb.ConfigurationError, match=variable):
        client.process_prompts_sync(["hello"])
    assert time.monotonic() - started < 1.0  # refused, not tried offline


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5"])
def test_estimate_needs_no_api_key(monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    frame = pd.DataFrame({"review": ["great", "bad"]})

    report = frame.deluge.estimate(
        model, prompt="Sentiment of: {review}", max_tokens=20
    )
    dry = frame.deluge.complete(
        model, prompt="Sentiment of: {review}", max_tokens=20, dry_run=True
    )

    assert isinstance(dry, type(report))
    assert report.requests == dry.requests == 2
    assert report.cost_usd > 0


def test_a_fully_cached_rerun_needs_no_key(
    sim: object, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_model(
        "sim-keyed",
        base_url=sim.base_url,  # type: ignore[attr-defined]
        api_key_env="DELUGE_TEST_SIM_KEY",
        tokenizer="o200k_base",
    )
    cache = tmp_path / "responses.sqlite3"  # type: ignore[operator]
    frame = pd.DataFrame({"p": [echo("a"), echo("b")]})
    monkeypatch.setenv("DELUGE_TEST_SIM_KEY", "sk-test")
    first = frame.deluge.complete("sim-keyed", prompt="p", progress=None, cache=cache)
    sent = sim.stats()["requests"]  # type: ignore[attr-defined]

    # As after a kernel restart without the key: every row is cached.
    monkeypatch.delenv("DELUGE_TEST_SIM_KEY")
    again = frame.deluge.complete("sim-keyed", prompt="p", progress=None, cache=cache)

    assert again["response"].tolist() == first["response"].tolist() == ["a", "b"]
    assert again["cached"].tolist() == [True, True]
    assert sim.stats()["requests"] == sent  # type: ignore[attr-defined]
    more = pd.DataFrame({"p": [echo("a"), echo("new")]})
    with pytest.raises(deluge_nb.ConfigurationError, match="DELUGE_TEST_SIM_KEY"):
        more.deluge.complete("sim-keyed", prompt="p", progress=None, cache=cache)
    assert sim.stats()["requests"] == sent  # type: ignore[attr-defined]


def test_nan_and_na_prompts_are_missing_like_none(sim: object) -> None:
    client = LLMClient("sim-client", progress=None, cache=False)
    prompts = pd.Series([echo("a"), float("nan"), pd.NA, None], dtype=object)

    results = client.process_prompts_sync(prompts.tolist())

    assert [r.response for r in results] == ["a", None, None, None]
    assert [r.error for r in results] == [None] * 4
    assert sim.stats()["requests"] == 1  # type: ignore[attr-defined]


def test_manual_progress_prints_a_line(
    sim: object, capsys: pytest.CaptureFixture[str]
) -> None:
    client = LLMClient("sim-client", progress="manual")
    client.process_prompts_sync([echo("a"), None])
    err = capsys.readouterr().err
    assert "2/2 rows" in err and "req/min" in err


def test_stats_after_a_job(sim: object) -> None:
    client = LLMClient("sim-client", progress=None)
    client.process_prompts_sync([echo("a"), None, echo("b", "status=400")])
    stats = client.stats
    assert stats is not None
    assert (stats.total, stats.done, stats.succeeded, stats.failed, stats.skipped) == (
        3,
        3,
        1,
        1,
        1,
    )
    assert stats.state == "done" and stats.limiter.in_flight == 0

    client.process_prompts_sync([echo("c", "status=400")])
    assert client.stats is not None and client.stats.state == "failed"


def test_environment_is_not_polluted_by_import() -> None:
    assert "OPENAI_API_KEY" not in os.environ or os.environ["OPENAI_API_KEY"]


async def test_k09_cancelled_job_gives_back_every_slot(sim: object) -> None:
    register_model("sim-k09", base_url=sim.base_url)  # type: ignore[attr-defined]
    client = LLMClient("sim-k09", progress=None, max_concurrent_requests=2)
    job = asyncio.ensure_future(
        client.process_prompts_async(
            [echo("boom", "status=400"), echo("x", "hang")] * 2
        )
    )
    await asyncio.sleep(0.5)
    assert client.limiter.in_flight >= 1  # the hung requests hold slots
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    await asyncio.sleep(0.1)  # the engine loop finishes unwinding
    assert client.limiter.in_flight == 0

    started = time.monotonic()
    results = await client.process_prompts_async([echo("a"), echo("b")])
    assert [r.response for r in results] == ["a", "b"]
    assert time.monotonic() - started < 1.0


def test_proxy_is_read_from_the_environment_once_per_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deluge_nb._runner import proxy_for

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://proxy.example:3128")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "internal.example")
    proxy_for.cache_clear()
    try:
        assert proxy_for("https://api.openai.com/v1") == "http://proxy.example:3128"
        assert proxy_for("https://internal.example/v1") is None
        assert proxy_for("http://api.openai.com/v1") is None  # no HTTP_PROXY
    finally:
        proxy_for.cache_clear()


@pytest.mark.parametrize(
    "prompts",
    ["hello", b"hello", 42, [1, 2.0], [{"a": 1}], ["ok", ("x",)], ["ok", []]],
)
def test_prompts_that_would_be_sent_wrongly_are_refused(
    sim: object, prompts: object
) -> None:
    client = LLMClient("sim-client", progress=None)
    with pytest.raises(TypeError, match="prompt"):
        client.process_prompts_sync(prompts)  # type: ignore[arg-type]
    assert sim.stats()["requests"] == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_or_models": None}, "model must be"),
        ({"model_or_models": "sim-client", "max_tokens": "10"}, "whole number"),
        ({"model_or_models": "sim-client", "max_tokens": 10.5}, "whole number"),
        ({"max_requests_per_minute": 0}, "max_requests_per_minute"),
        ({"max_requests_per_minute": "60"}, "max_requests_per_minute"),
        ({"max_tokens_per_minute": 0}, "max_tokens_per_minute"),
        ({"max_tokens_per_minute": True}, "max_tokens_per_minute"),
        ({"max_input_tokens_per_minute": -1}, "max_input_tokens_per_minute"),
        ({"max_concurrent_requests": 2.5}, "max_concurrent_requests"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests"),
        ({"timeout": "1"}, "timeout"),
        ({"timeout": None}, "timeout"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"max_cost": "5"}, "max_cost"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"api_key": 12345}, "api_key must be a string"),
        ({"progress": "fancy"}, "progress='fancy'"),
        ({"progress": 3}, "progress=3"),
    ],
)
def test_bad_arguments_get_clear_errors(
    kwargs: dict[str, object], message: str
) -> None:
    kwargs.setdefault("model_or_models", "sim-client")
    with pytest.raises(deluge_nb.ConfigurationError, match=message):
        LLMClient(**kwargs)  # type: ignore[arg-type]


def test_limits_given_at_registration_are_ceilings_the_server_cannot_raise() -> None:
    with serve(requests_per_minute=6000, latency_s=0.05) as server:
        register_model(
            "sim-reg300", base_url=server.base_url, max_requests_per_minute=300
        )
        client = LLMClient("sim-reg300", progress=None)
        client.process_prompts_sync([f"[[sim:echo]]{i}" for i in range(12)])
        admitted = server.stats()["admitted_times"]
    assert client.limiter.snapshot().max_requests_per_minute == 300
    # 300/min is 5 a second: 12 requests span at least 1.4 s.
    assert max(admitted) - min(admitted) >= 1.3


def test_register_model_without_a_server_is_refused() -> None:
    with pytest.raises(deluge_nb.ConfigurationError, match="base_url"):
        register_model("my-llm")
