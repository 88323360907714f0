"""``LLMClient``: one model, or several sharing one budget, and the job loop.

A job takes a list of prompts (text, a list of chat messages, or None for a
missing prompt) and returns one ``Completion`` per prompt, in order. Inside:

1. rows with no prompt finish at once, unsent;
2. rows that can never fit the context window or the tokens/min limit
   finish at once with an error;
3. a dispatcher walks the rest in order, waits for the limiter to admit
   each one, and starts a task for it, so tasks exist only for requests in
   flight, never one per row;
4. each task sends, retries what can be retried (re-entering the limiter
   each time) and records its row's result.

A 429 pauses the whole limiter; other failures back off only their own row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from . import _runner
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    RateLimitError,
    RequestError,
    RequestTooLargeError,
    ServerError,
)
from ._limits import (
    DEFAULT_MAX_CONCURRENT,
    Limiter,
    Reservation,
    get_limiter,
    limiter_key,
)
from ._models import ModelInfo, get_model
from ._progress import close_quietly, drive, make_view
from ._retry import is_retryable_status, parse_retry_after, retry_delay
from ._stats import JobStats, StatsSnapshot
from ._tokens import count_message_tokens, count_text_tokens
from ._types import Completion, Usage
from .providers import ParsedResponse, get_provider

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_ATTEMPTS = 5

Prompt = str | Sequence[Mapping[str, Any]] | None
ErrorsMode = Literal["store", "raise"]


@dataclass(frozen=True)
class _Row:
    """One prompt on its way: where it goes and what it reserves."""

    position: int
    model: ModelInfo
    messages: list[dict[str, Any]]
    input_estimate: int


class LLMClient:
    """Send many prompts through one rate-limited budget.

    Parameters
    ----------
    model_or_models
        A registry name, or several names that share one budget; rows go to
        them in turn.
    max_requests_per_minute, max_tokens_per_minute, max_concurrent_requests
        Limits; by default the first model's registry limits and
        ``DEFAULT_MAX_CONCURRENT``. Two clients on the same API key and
        models share one limiter, so two cells never double the rate.
    max_tokens
        Output cap per request; the limiter reserves it before sending.
    temperature
        Sampling temperature; None leaves the server's default.
    system
        A system message put before every text prompt.
    timeout
        Seconds for one attempt, after which it is retried.
    max_attempts
        Attempts per row, the first included.
    progress
        ``"auto"``, ``"tqdm"``, ``"manual"`` or None.
    api_key
        The key; by default read from the model's environment variable. It
        is never shown in a repr, a log record or an error.
    errors
        ``"store"`` (failures go to the row's ``error``) or ``"raise"``
        (the first failure stops the job and is raised).
    """

    def __init__(
        self,
        model_or_models: str | Sequence[str],
        *,
        max_requests_per_minute: float | None = None,
        max_tokens_per_minute: float | None = None,
        max_concurrent_requests: int | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float | None = None,
        system: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        progress: Any = "auto",
        api_key: str | None = None,
        errors: ErrorsMode = "store",
    ) -> None:
        names = (
            [model_or_models]
            if isinstance(model_or_models, str)
            else list(model_or_models)
        )
        if not names:
            raise ConfigurationError("give at least one model")
        if max_tokens < 1:
            raise ConfigurationError(f"max_tokens must be >= 1, got {max_tokens!r}")
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {max_attempts!r}")
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}")
        if errors not in ("store", "raise"):
            raise ConfigurationError(
                f"errors must be 'store' or 'raise', got {errors!r}"
            )

        self.models = [get_model(name) for name in names]
        self.max_tokens = int(max_tokens)
        self.temperature = temperature
        self.system = system
        self.timeout = float(timeout)
        self.max_attempts = int(max_attempts)
        self.progress = progress
        self.errors: ErrorsMode = errors
        self._api_key = api_key
        self._rng = random.Random()

        first = self.models[0]
        explicit = any(
            v is not None
            for v in (
                max_requests_per_minute,
                max_tokens_per_minute,
                max_concurrent_requests,
            )
        )
        self.limiter: Limiter = get_limiter(
            limiter_key(first.base_url, self._key_for(first), "+".join(names)),
            max_requests_per_minute=max_requests_per_minute
            or first.max_requests_per_minute,
            max_tokens_per_minute=max_tokens_per_minute or first.max_tokens_per_minute,
            max_concurrent_requests=max_concurrent_requests or DEFAULT_MAX_CONCURRENT,
            explicit=explicit,
        )
        self._last_stats: JobStats | None = None

    def __repr__(self) -> str:
        names = ", ".join(m.name for m in self.models)
        lim = self.limiter
        return (
            f"LLMClient([{names}], max_requests_per_minute="
            f"{lim.requests.per_minute:g}, max_tokens_per_minute="
            f"{lim.tokens.per_minute:g}, max_concurrent_requests="
            f"{lim.max_concurrent_requests})"
        )

    # -- public ----------------------------------------------------------

    def process_prompts_sync(
        self, prompts: Sequence[Prompt], show_progress: bool = True
    ) -> list[Completion]:
        """Send every prompt and wait; one ``Completion`` per prompt, in order.

        Works in scripts and inside a running notebook loop alike.
        """
        return _runner.run_sync(self._run(prompts, show_progress))

    async def process_prompts_async(
        self, prompts: Sequence[Prompt], show_progress: bool = True
    ) -> list[Completion]:
        """The awaitable form of ``process_prompts_sync``."""
        return await _runner.run_async(self._run(prompts, show_progress))

    @property
    def stats(self) -> StatsSnapshot | None:
        """The latest job's counters, readable while it runs."""
        return None if self._last_stats is None else self._last_stats.snapshot()

    # -- the job ---------------------------------------------------------

    async def _run(
        self, prompts: Sequence[Prompt], show_progress: bool
    ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(prompts)
        stats = JobStats(total=len(prompts), limiter=self.limiter)
        self._last_stats = stats
        view = make_view(self.progress, len(prompts)) if show_progress else None
        refresher = asyncio.ensure_future(drive(view, stats)) if view else None
        job = _Job(self, results, stats)
        try:
            await job.run(prompts)
            stats.state = "failed" if stats.failed else "done"
        except BaseException:
            stats.state = "cancelled"
            raise
        finally:
            stats.finished = time.monotonic()
            if refresher is not None:
                refresher.cancel()
            if view is not None:
                close_quietly(view, stats)
        return [r if r is not None else Completion() for r in results]

    # -- helpers used by the job -----------------------------------------

    def _key_for(self, model: ModelInfo) -> str | None:
        if self._api_key is not None:
            return self._api_key
        if model.api_key_env is None:
            return None
        key = os.environ.get(model.api_key_env)
        if not key and model.provider == "openai":
            raise ConfigurationError(
                f"model {model.name!r} needs an API key: set {model.api_key_env} or "
                "pass api_key=. To try deluge_nb without one, use the simulator "
                "(deluge_nb.sim.serve) or a local model (deluge_nb.local)."
            )
        return key or None

    def _messages(
        self, prompt: str | Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
            if self.system:
                messages.insert(0, {"role": "system", "content": self.system})
            return messages
        return [dict(m) for m in prompt]


class _Job:
    """One run of a client over a list of prompts."""

    def __init__(
        self, client: LLMClient, results: list[Completion | None], stats: JobStats
    ) -> None:
        self.client = client
        self.results = results
        self.stats = stats
        self.limiter = client.limiter
        self.tasks: set[asyncio.Task[None]] = set()
        self.first_error: RequestError | None = None
        self.params = {
            "max_tokens": client.max_tokens,
            "temperature": client.temperature,
        }

    async def run(self, prompts: Sequence[Prompt]) -> None:
        try:
            await self._dispatch(prompts)
            while self.tasks:
                await asyncio.wait(set(self.tasks))
        except BaseException:
            for task in self.tasks:
                task.cancel()
            if self.tasks:
                await asyncio.wait(set(self.tasks))
            for position, result in enumerate(self.results):
                if result is None:
                    self.results[position] = Completion(
                        error="cancelled: the job was stopped before this row finished"
                    )
            raise
        if self.first_error is not None and self.client.errors == "raise":
            raise self.first_error

    async def _dispatch(self, prompts: Sequence[Prompt]) -> None:
        client = self.client
        models = client.models
        for position, prompt in enumerate(prompts):
            if self.first_error is not None and client.errors == "raise":
                return
            if prompt is None:
                self._finish(position, Completion(), skipped=True)
                continue

            model = models[position % len(models)]
            messages = client._messages(prompt)
            estimate = count_message_tokens(messages, model.tokenizer)
            row = _Row(position, model, messages, estimate)
            reserve = estimate + client.max_tokens
            problem = self._never_fits(row, reserve)
            if problem is not None:
                self._fail(
                    row,
                    RequestTooLargeError(problem, row=position, model=model.name),
                    0,
                )
                continue

            reservation = await self.limiter.acquire(reserve)
            task = asyncio.ensure_future(self._send_row(row, reservation))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _never_fits(self, row: _Row, reserve: int) -> str | None:
        window = row.model.context_window
        if window is not None and reserve > window:
            return (
                f"prompt of about {row.input_estimate} tokens plus max_tokens="
                f"{self.client.max_tokens} exceeds the context window of "
                f"{row.model.name} ({window} tokens)"
            )
        return self.limiter.check_fits(reserve)

    async def _send_row(self, row: _Row, reservation: Reservation) -> None:
        client = self.client
        reserve = row.input_estimate + client.max_tokens
        attempt = 1
        while True:
            started = time.perf_counter()
            used: float | None = None
            error: RequestError | None = None
            try:
                parsed, usage = await self._attempt(row, attempt)
                used = usage.total_tokens
            except RequestError as exc:
                error = exc
                if isinstance(exc, RateLimitError):
                    used = 0.0  # a rejected request spent no tokens
            finally:
                self.limiter.release(reservation, used)

            if error is None:
                self._succeed(
                    row, parsed, usage, attempt, time.perf_counter() - started
                )
                return

            if isinstance(error, RateLimitError):
                self.stats.rate_limited += 1
            if not error.retryable or attempt >= client.max_attempts:
                self._fail(row, error, attempt)
                return

            delay = error.retry_after
            if delay is None:
                delay = retry_delay(attempt, rng=client._rng)
            self.stats.retries += 1
            if isinstance(error, RateLimitError):
                # Everyone on this key waits, not just this row.
                self.limiter.pause(delay, "429")
            else:
                logger.debug(
                    "row %d: %s; retrying in %.2f s", row.position, error, delay
                )
                await asyncio.sleep(delay)
            attempt += 1
            reservation = await self.limiter.acquire(reserve)

    async def _attempt(self, row: _Row, attempt: int) -> tuple[ParsedResponse, Usage]:
        """Send once. Raises a ``RequestError`` with ``retryable`` set."""
        client = self.client
        model = row.model
        provider = get_provider(model.provider)
        spec = provider.build(model, row.messages, self.params, client._key_for(model))
        session = await _runner.get_session()
        where = {"row": row.position, "model": model.name, "attempt": attempt}
        try:
            async with session.post(
                spec.url,
                json=spec.body,
                headers=dict(spec.headers),
                timeout=aiohttp.ClientTimeout(total=client.timeout),
            ) as response:
                status = response.status
                headers = response.headers
                text = await response.text()
        except asyncio.TimeoutError as exc:
            raise _retryable(
                APITimeoutError(f"no response within {client.timeout:g} s", **where)
            ) from exc
        except aiohttp.ClientError as exc:
            raise _retryable(
                APIConnectionError(
                    f"connection failed: {type(exc).__name__}: {exc}", **where
                )
            ) from exc

        if status != 200:
            message = provider.error_message(status, text)
            error: APIStatusError
            if status == 429:
                error = RateLimitError(message, status=status, **where)
            elif status >= 500:
                error = ServerError(message, status=status, **where)
            else:
                error = APIStatusError(message, status=status, **where)
            error.retryable = is_retryable_status(status, headers)
            error.retry_after = parse_retry_after(headers, time.time())
            raise error

        try:
            parsed = provider.parse(json.loads(text))
        except ValueError as exc:
            # A truncated or garbled 200 is a transient server fault.
            raise _retryable(
                APIConnectionError(f"unreadable response body: {exc}", **where)
            ) from exc
        usage = parsed.usage or Usage(
            input_tokens=row.input_estimate,
            output_tokens=count_text_tokens(parsed.text, model.tokenizer),
        )
        return parsed, usage

    def _succeed(
        self,
        row: _Row,
        parsed: ParsedResponse,
        usage: Usage,
        attempts: int,
        latency: float,
    ) -> None:
        self._finish(
            row.position,
            Completion(
                response=parsed.text,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=row.model.cost_usd(usage),
                model=row.model.name,
                finish_reason=parsed.finish_reason,
                latency_s=latency,
                attempts=attempts,
            ),
        )

    def _fail(self, row: _Row, error: RequestError, attempts: int) -> None:
        logger.debug("row %d failed: %s", row.position, error)
        if self.first_error is None:
            self.first_error = error
        self._finish(
            row.position,
            Completion(model=row.model.name, attempts=attempts, error=error.message),
        )

    def _finish(
        self, position: int, result: Completion, *, skipped: bool = False
    ) -> None:
        self.results[position] = result
        stats = self.stats
        stats.done += 1
        if skipped:
            stats.skipped += 1
        elif result.error is not None:
            stats.failed += 1
        else:
            stats.succeeded += 1
            stats.input_tokens += result.input_tokens or 0
            stats.output_tokens += result.output_tokens or 0
            stats.cost_usd += result.cost_usd or 0.0


def _retryable(error: RequestError) -> RequestError:
    error.retryable = True
    return error
