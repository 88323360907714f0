"""The clients under test, each behind one function of the same shape.

``CLIENTS[name](base_url, settings, prompts)`` sends every prompt to the
OpenAI-compatible server at ``base_url`` and returns an ``Outcome``: one
response text or one error per row, in row order, and the wall time of the
sending alone (the client's own set-up, such as registering a model, is not
timed; everything the client does with the prompts is).

- ``deluge_nb``: ``LLMClient(...).submit(prompts).result()``, which is what
  ``process_prompts_sync`` does, with a deadline so a stuck run cannot hang
  the benchmark.
- ``lm-deluge``: its ``LLMClient`` on a model registered for the endpoint,
  told the same limits.
- ``openai``: ``AsyncOpenAI`` and an ``asyncio.Semaphore``, the loop most
  people write: no rate limiter, the SDK's default retries.
- ``aiohttp``: one ``ClientSession``, a semaphore, no retries; the ceiling
  for the overhead scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Names are unique per run: deluge_nb shares one limiter per (endpoint, key,
# model) across a process, and a port reused by a later simulator must not
# inherit what an earlier run learned.
_run_ids = itertools.count(1)

MODEL = "bench"  # what every client sends as "model"
KEY_ENV = "DELUGE_BENCH_SIM_KEY"  # lm-deluge insists on reading a key from env


@dataclass(frozen=True)
class Settings:
    """What a client is told for one run.

    ``requests_per_minute`` and ``tokens_per_minute`` None mean unlimited;
    ``timeout`` None leaves each client's own default.
    """

    requests_per_minute: float | None
    tokens_per_minute: float | None
    max_tokens: int = 100
    concurrency: int = 64
    timeout: float | None = None
    deadline_s: float = 600.0


@dataclass
class Outcome:
    """One client run: per row a response or an error, and the wall time."""

    texts: list[str | None]
    errors: list[str | None]
    wall_s: float
    crashed: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _empty(n: int) -> tuple[list[str | None], list[str | None]]:
    return [None] * n, [None] * n


# -- deluge_nb -------------------------------------------------------------


def run_deluge_nb(base_url: str, settings: Settings, prompts: Sequence[str]) -> Outcome:
    import deluge_nb

    name = f"bench-{next(_run_ids)}"
    deluge_nb.register_model(
        name, base_url=base_url, api_model=MODEL, tokenizer="o200k_base"
    )
    options: dict[str, Any] = {}
    if settings.timeout is not None:
        options["timeout"] = settings.timeout
    client = deluge_nb.LLMClient(
        name,
        max_requests_per_minute=settings.requests_per_minute or math.inf,
        max_tokens_per_minute=settings.tokens_per_minute or math.inf,
        max_concurrent_requests=settings.concurrency,
        max_tokens=settings.max_tokens,
        progress=None,
        cache=False,
        **options,
    )
    texts, errors = _empty(len(prompts))
    started = time.perf_counter()
    job = client.submit(list(prompts), show_progress=False)
    try:
        completions = job.result(timeout=settings.deadline_s)
    except TimeoutError:
        job.cancel()
        completions = job.result(timeout=10)
        crashed = f"deadline of {settings.deadline_s:.0f} s passed; cancelled"
    else:
        crashed = None
    wall = time.perf_counter() - started
    for row, completion in enumerate(completions):
        texts[row] = completion.response if completion.error is None else None
        errors[row] = completion.error
    stats = job.stats
    notes = {
        "client_rate_limited": stats.rate_limited,
        "client_retries": stats.retries,
    }
    return Outcome(texts, errors, wall, crashed, notes)


# -- lm-deluge -------------------------------------------------------------


def run_lm_deluge(base_url: str, settings: Settings, prompts: Sequence[str]) -> Outcome:
    from lm_deluge import LLMClient
    from lm_deluge.models import register_model

    os.environ.setdefault(KEY_ENV, "sim-key")
    model_id = f"bench-{next(_run_ids)}"
    register_model(
        id=model_id,
        name=MODEL,
        api_base=base_url,
        api_key_env_var=KEY_ENV,
        api_spec="openai",
    )
    options: dict[str, Any] = {}
    if settings.timeout is not None:
        options["request_timeout"] = math.ceil(settings.timeout)
    client = LLMClient(
        model_id,
        max_requests_per_minute=_int_limit(settings.requests_per_minute),
        max_tokens_per_minute=_int_limit(settings.tokens_per_minute),
        max_concurrent_requests=settings.concurrency,
        max_new_tokens=settings.max_tokens,
        **options,
    )
    texts, errors = _empty(len(prompts))
    printed = io.StringIO()  # it prints a line per failed attempt
    crashed = None
    started = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        try:
            responses = asyncio.run(
                asyncio.wait_for(
                    client.process_prompts_async(list(prompts), show_progress=False),
                    settings.deadline_s,
                )
            )
        except asyncio.TimeoutError:
            responses = []
            crashed = f"deadline of {settings.deadline_s:.0f} s passed; cancelled"
    wall = time.perf_counter() - started
    for row, response in enumerate(responses):
        if response is None or response.is_error:
            errors[row] = (
                response.error_message or f"status {response.status_code}"
                if response is not None
                else "no response object"
            )
        else:
            texts[row] = response.completion
    notes = {"printed_lines": printed.getvalue().count("\n")}
    return Outcome(texts, errors, wall, crashed, notes)


def _int_limit(value: float | None) -> int:
    # lm-deluge takes ints and has no "unlimited"; a billion per minute is.
    return 10**9 if value is None else int(value)


# -- openai + semaphore ------------------------------------------------------


def run_openai(base_url: str, settings: Settings, prompts: Sequence[str]) -> Outcome:
    texts, errors = _empty(len(prompts))

    async def main() -> None:
        import openai

        options: dict[str, Any] = {}
        if settings.timeout is not None:
            options["timeout"] = settings.timeout
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sim-key", **options)
        limit = asyncio.Semaphore(settings.concurrency)

        async def one(row: int, prompt: str) -> None:
            async with limit:
                try:
                    reply = await client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": prompt}],
                        max_tokens=settings.max_tokens,
                    )
                    texts[row] = reply.choices[0].message.content
                except Exception as exc:  # what a user's loop does: note, go on
                    errors[row] = f"{type(exc).__name__}: {exc}"

        try:
            await asyncio.gather(*(one(r, p) for r, p in enumerate(prompts)))
        finally:
            await client.close()

    return _timed_async(main, settings, texts, errors)


# -- bare aiohttp ------------------------------------------------------------


def run_aiohttp(base_url: str, settings: Settings, prompts: Sequence[str]) -> Outcome:
    texts, errors = _empty(len(prompts))

    async def main() -> None:
        import aiohttp

        url = f"{base_url}/chat/completions"
        limit = asyncio.Semaphore(settings.concurrency)
        timeout = aiohttp.ClientTimeout(total=settings.timeout)
        connector = aiohttp.TCPConnector(limit=settings.concurrency)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout
        ) as session:

            async def one(row: int, prompt: str) -> None:
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": settings.max_tokens,
                }
                async with limit:
                    try:
                        async with session.post(url, json=body) as reply:
                            data = await reply.json()
                            status = reply.status
                    except Exception as exc:
                        errors[row] = f"{type(exc).__name__}: {exc}"
                        return
                if status == 200:
                    texts[row] = data["choices"][0]["message"]["content"]
                else:
                    errors[row] = f"HTTP {status}: {data}"

            await asyncio.gather(*(one(r, p) for r, p in enumerate(prompts)))

    return _timed_async(main, settings, texts, errors)


def _timed_async(
    main: Callable[[], Any],
    settings: Settings,
    texts: list[str | None],
    errors: list[str | None],
) -> Outcome:
    """Run ``main()`` on a new loop; it fills ``texts`` and ``errors``."""
    outcome = Outcome(texts, errors, 0.0)
    started = time.perf_counter()
    try:
        asyncio.run(asyncio.wait_for(main(), settings.deadline_s))
    except asyncio.TimeoutError:
        outcome.crashed = f"deadline of {settings.deadline_s:.0f} s passed; cancelled"
    outcome.wall_s = time.perf_counter() - started
    return outcome


CLIENTS: dict[str, Callable[[str, Settings, Sequence[str]], Outcome]] = {
    "deluge_nb": run_deluge_nb,
    "lm-deluge": run_lm_deluge,
    "openai": run_openai,
    "aiohttp": run_aiohttp,
}
