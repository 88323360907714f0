"""A job: one run of a client over a list of prompts, and its handle.

``Job`` is what ``df.deluge.submit`` and ``LLMClient.submit`` return at
once: the work runs on the engine loop while the caller goes on. The
blocking and awaitable calls are built on it too, so every path shares one
way to stop: ``Job.cancel`` (the Stop button, the kernel's interrupt,
Ctrl-C) cancels the requests in flight, keeps every finished row, marks the
others as cancelled, and hands back the partial result.

Inside a run:

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
import concurrent.futures
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import aiohttp

from . import _runner
from ._budget import Budget
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ErrorContext,
    RateLimitError,
    RequestError,
    RequestTooLargeError,
    ServerError,
)
from ._headers import parse_rate_limit_headers
from ._limits import NeverFitsError, Reservation
from ._plan import PlannedRequest, plan_requests
from ._progress import close_quietly, drive, make_view
from ._retry import (
    backoff_delay,
    is_retryable_status,
    parse_retry_after,
    retry_delay,
    usable_server_wait,
)
from ._stats import JobStats, StatsSnapshot
from ._tokens import count_text_tokens
from ._types import Completion, Usage
from .providers import ParsedResponse, get_provider

if TYPE_CHECKING:
    from ._client import LLMClient, Prompt

logger = logging.getLogger(__name__)

T = TypeVar("T")

CANCELLED = "cancelled: the job was stopped before this row finished"

# How long a stopped job may take to unwind before result() gives up.
STOP_GRACE_S = 5.0
# How often a blocking wait checks for a KeyboardInterrupt.
INTERRUPT_POLL_S = 0.1


class Job(Generic[T]):
    """A running job; returned at once by ``submit``.

    ``result()`` waits for it, ``await job`` awaits it, ``cancel()`` stops
    it within about a second and keeps what finished. ``stats`` is
    readable at any time.
    """

    def __init__(
        self,
        client: LLMClient,
        prompts: Sequence[Prompt],
        *,
        finalize: Callable[[list[Completion], StatsSnapshot], T] | None = None,
        show_progress: bool = True,
    ) -> None:
        self.client = client
        self._prompts = prompts
        self._results: list[Completion | None] = [None] * len(prompts)
        self._stats = JobStats(total=len(prompts), limiter=client.limiter)
        self._finalize = finalize
        self._show_progress = show_progress
        self._future: concurrent.futures.Future[list[Completion]] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._stop_requested = False
        self._paused = False
        self._resumed: asyncio.Event | None = None
        self._budget = Budget(client.max_cost)
        self._stats.max_cost_usd = client.max_cost
        # Known once the job is planned; max_tokens is a floor until then.
        self.largest_request_tokens = float(client.max_tokens)
        self.progress: Any = None

    # -- control ---------------------------------------------------------

    def start(self) -> Job[T]:
        """Start the job on the engine loop; returns at once.

        The progress view is made here, on the caller's thread, so that a
        notebook panel is displayed in the cell that started the job even
        when that cell ends at once (``submit``, Run All).
        """
        if self._future is None:
            if self._show_progress and self.progress is None:
                self.progress = make_view(
                    self.client.progress,
                    self._stats.total,
                    limiter=self.client.limiter,
                    controls=self,
                )
            self._future = _runner.submit(self._main())
        return self

    def cancel(self) -> None:
        """Stop sending; requests in flight are abandoned, finished rows kept."""
        self._stop_requested = True
        loop = _runner.get_loop()
        loop.call_soon_threadsafe(self._cancel_task)

    def pause(self) -> None:
        """Send nothing new until ``resume``; requests in flight finish."""
        self._paused = True
        self._stats.state = "paused"
        _runner.get_loop().call_soon_threadsafe(self._sync_pause)

    def resume(self) -> None:
        self._paused = False
        if self._stats.state == "paused":
            self._stats.state = "running"
        _runner.get_loop().call_soon_threadsafe(self._sync_pause)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def done(self) -> bool:
        return self._future is not None and self._future.done()

    @property
    def stats(self) -> StatsSnapshot:
        return self._stats.snapshot()

    # -- results ---------------------------------------------------------

    def result(self, timeout: float | None = None) -> T:
        """Wait for the job and return its result.

        A ``KeyboardInterrupt`` while waiting (the kernel's stop button,
        Ctrl-C) stops the job and returns the rows finished so far.
        """
        future = self.start()._future
        assert future is not None
        try:
            completions = _wait_interruptibly(future, timeout)
        except KeyboardInterrupt:
            completions = self._stop_after_interrupt(future)
            logger.warning(
                "interrupted: %d of %d rows finished; the rest are marked cancelled",
                sum(1 for c in completions if c.error != CANCELLED),
                len(completions),
            )
        return self._finish(completions)

    def _stop_after_interrupt(
        self, future: concurrent.futures.Future[list[Completion]]
    ) -> list[Completion]:
        """Stop the job and wait for its partial result.

        A second press of the stop button while the job unwinds must not
        cost the finished rows (or leave the job running with no handle),
        so further interrupts here only restart the stop.
        """
        deadline = time.monotonic() + STOP_GRACE_S
        while True:
            try:
                self.cancel()
                return future.result(max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:
                continue

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    async def _wait(self) -> T:
        future = self.start()._future
        assert future is not None
        if _runner.in_engine_thread():
            raise RuntimeError("a job cannot be awaited from inside another job")
        try:
            completions = await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            # The awaiting cell was interrupted: stop the job with it.
            self.cancel()
            raise
        return self._finish(completions)

    def _finish(self, completions: list[Completion]) -> T:
        if self._finalize is None:
            return completions  # type: ignore[return-value]
        return self._finalize(completions, self._stats.snapshot())

    def __repr__(self) -> str:
        snap = self._stats.snapshot()
        return (
            f"<Job {snap.state}: {snap.done}/{snap.total} rows, "
            f"{snap.failed} errors, ${snap.cost_usd:.4f}>"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        view = self.progress
        if view is not None and hasattr(view, "_repr_mimebundle_"):
            return view._repr_mimebundle_(**kwargs)
        return {"text/plain": repr(self)}

    # -- on the engine loop ----------------------------------------------

    async def _main(self) -> list[Completion]:
        self._task = asyncio.current_task()
        self._resumed = asyncio.Event()
        self._sync_pause()
        stats = self._stats
        stats.started = time.monotonic()
        view = self.progress
        refresher = asyncio.ensure_future(drive(view, stats)) if view else None
        try:
            if self._stop_requested:
                raise asyncio.CancelledError
            await _Run(self).run(self._prompts)
            nothing_ok = stats.succeeded == 0 and stats.failed > 0
            stats.state = "failed" if nothing_ok else "done"
        except asyncio.CancelledError:
            stats.state = "stopped"
            if not self._stop_requested:
                raise
            # A stop we asked for: the partial result is the answer.
        except BaseException:
            stats.state = "failed"
            raise
        finally:
            stats.finished = time.monotonic()
            if refresher is not None:
                refresher.cancel()
            if view is not None:
                close_quietly(view, stats)
        return [
            r if r is not None else Completion(error=CANCELLED) for r in self._results
        ]

    def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _sync_pause(self) -> None:
        if self._resumed is None:
            return
        if self._paused:
            self._resumed.clear()
        else:
            self._resumed.set()

    async def _wait_while_paused(self) -> None:
        if self._resumed is not None and not self._resumed.is_set():
            await self._resumed.wait()


def _wait_interruptibly(
    future: concurrent.futures.Future[list[Completion]], timeout: float | None
) -> list[Completion]:
    """``future.result(timeout)``, waking often enough to see an interrupt.

    A thread blocked on a lock may not wake for a signal that another
    thread received, so the wait is cut into short slices; a pending
    KeyboardInterrupt is raised between them.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        slice_s = (
            INTERRUPT_POLL_S if left is None else max(0.0, min(left, INTERRUPT_POLL_S))
        )
        try:
            return future.result(slice_s)
        except concurrent.futures.TimeoutError:
            if left is not None and left <= INTERRUPT_POLL_S:
                raise


class _Run:
    """The work of one job: cache, dedupe, budget, dispatch, send, retry."""

    def __init__(self, job: Job[Any]) -> None:
        client = job.client
        self.job = job
        self.client = client
        self.results = job._results
        self.stats = job._stats
        self.limiter = client.limiter
        self.cache = client.cache
        self.budget = job._budget
        self.tasks: set[asyncio.Task[None]] = set()
        self.first_error: RequestError | None = None
        self.cache_warned = False
        self.params = client.request_params()

    async def run(self, prompts: Sequence[Prompt]) -> None:
        try:
            plan = plan_requests(self.client, prompts)
            for position in plan.missing:
                self.results[position] = _MISSING
            self.stats.done += len(plan.missing)
            self.stats.skipped += len(plan.missing)

            pending = await self._answer_from_cache(plan.requests)
            if pending:
                self.client._check_keys()
            self.job.largest_request_tokens = max(
                (
                    r.input_estimate + self.client.max_tokens
                    for r in pending
                    if r.problem is None
                ),
                default=float(self.client.max_tokens),
            )
            await self._dispatch(pending)
            while self.tasks:
                await asyncio.wait(set(self.tasks))
        except BaseException:
            for task in self.tasks:
                task.cancel()
            if self.tasks:
                await asyncio.wait(set(self.tasks))
            for position, result in enumerate(self.results):
                if result is None:
                    self.results[position] = _CANCELLED
            raise
        finally:
            if self.cache is not None:
                # Finished rows must survive an interrupt or a crash.
                await self._cache_write(self.cache.aflush())
        if self.first_error is not None and self.client.errors == "raise":
            raise self.first_error

    async def _answer_from_cache(
        self, requests: list[PlannedRequest]
    ) -> list[PlannedRequest]:
        """Finish the requests the cache answers; return the others."""
        if self.cache is None:
            return requests
        hits = await self.cache.aget_many([r.key for r in requests])
        if hits:
            logger.debug("cache answered %d of %d requests", len(hits), len(requests))
        pending = []
        for request in requests:
            hit = hits.get(request.key)
            if hit is None:
                pending.append(request)
                continue
            # Cached rows cost nothing now; the column says what this run paid.
            self._finish(request, replace(hit, cost_usd=0.0, cached=True))
        return pending

    async def _dispatch(self, requests: list[PlannedRequest]) -> None:
        for index, request in enumerate(requests):
            if self.raising:
                return
            if request.problem is not None:
                error = RequestTooLargeError(
                    request.problem, row=request.first, model=request.model.name
                )
                self._finish(request, self._failed(request, error, attempts=0))
                continue

            shared = _in_flight.get(request.key)
            if shared is not None:
                self._start(self._follow(request, shared))
                continue
            if not await self._send_one(request):
                message = self.budget.exhausted_message()
                logger.info(
                    "%s; %d requests left unsent", message, len(requests) - index
                )
                for unsent in requests[index:]:
                    self._finish(unsent, Completion(error=message))
                return

    async def _send_one(self, request: PlannedRequest) -> bool:
        """Reserve money and rate for one request and start sending it.

        The request is announced in ``_in_flight`` from the start, so that
        another job planning the same request waits for this one. Returns
        False, having sent nothing, when the budget cannot cover it.
        """
        answer: asyncio.Future[Completion | None] = (
            asyncio.get_running_loop().create_future()
        )
        _in_flight[request.key] = answer
        started = False
        try:
            worst_case = self._worst_case_cost(request)
            if not await self._reserve_money(worst_case):
                return False

            await self.job._wait_while_paused()
            try:
                reservation = await self._acquire(request, attempt=1)
            except RequestTooLargeError as error:
                self.budget.settle(worst_case, 0.0)
                self._finish(request, self._failed(request, error, attempts=0))
                return True
            if self.raising:  # a row failed while this one waited
                self.budget.settle(worst_case, 0.0)
                self._release(reservation, Usage())
                return True
            self._start(self._send(request, reservation, worst_case, answer))
            started = True
            return True
        finally:
            if not started:
                _publish(request.key, answer, None)

    async def _follow(
        self, request: PlannedRequest, shared: asyncio.Future[Completion | None]
    ) -> None:
        """Take another job's answer to the same request, or send it after all."""
        logger.debug("row %d: the same request is in flight; waiting", request.first)
        answer = await asyncio.shield(shared)
        if answer is not None:
            self._finish(request, _served(answer))
            return
        if self.raising:
            return
        # The other job failed, or was stopped, before it had an answer.
        if not await self._send_one(request):
            self._finish(request, Completion(error=self.budget.exhausted_message()))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def raising(self) -> bool:
        """Whether a row failed under ``errors="raise"``: the job is over."""
        return self.first_error is not None and self.client.errors == "raise"

    def _worst_case_cost(self, request: PlannedRequest) -> float:
        if self.budget.max_cost_usd is None:
            return 0.0  # nothing to reserve against
        usage = Usage(
            input_tokens=request.input_estimate, output_tokens=self.client.max_tokens
        )
        return request.model.cost_usd(usage)

    async def _reserve_money(self, worst_case: float) -> bool:
        """Reserve against max_cost, waiting for in-flight rows to settle."""
        while not self.budget.try_reserve(worst_case):
            if not self.tasks:
                return False
            await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_COMPLETED)
        return True

    async def _acquire(self, request: PlannedRequest, *, attempt: int) -> Reservation:
        """Wait for the limiter; the request reserves its worst case.

        Raises ``RequestTooLargeError`` when a limit is, or drops, below
        what the request needs.
        """
        max_tokens = self.client.max_tokens
        try:
            return await self.limiter.acquire(
                request.input_estimate + max_tokens,
                input_tokens=request.input_estimate,
                output_tokens=max_tokens,
            )
        except NeverFitsError as exc:
            raise RequestTooLargeError(
                str(exc), row=request.first, model=request.model.name, attempt=attempt
            ) from exc

    async def _send(
        self,
        request: PlannedRequest,
        reservation: Reservation,
        worst_case: float,
        answer: asyncio.Future[Completion | None],
    ) -> None:
        spent = 0.0
        completion: Completion | None = None
        try:
            completion = await self._send_with_retries(request, reservation)
            spent = completion.cost_usd or 0.0
        except Exception as exc:
            # A bug of ours or a reply no parser foresaw: this row fails
            # with the reason, and the job goes on.
            logger.exception("row %d: unexpected error", request.first)
            error = RequestError(
                f"unexpected error: {type(exc).__name__}: {exc}",
                row=request.first,
                model=request.model.name,
            )
            completion = self._failed(request, error, attempts=0)
        finally:
            self.budget.settle(worst_case, spent)
            _publish(request.key, answer, completion)
        self._finish(request, completion)
        if completion.error is None and self.cache is not None:
            await self._cache_write(self.cache.aput(request.key, completion))

    async def _cache_write(self, write: Awaitable[None]) -> None:
        """Await a cache write; a failing cache costs its rows, not the job."""
        try:
            await write
        except Exception as exc:
            # The rows are answered and in the result; only a re-run would
            # miss them. Not once per row: the same cause repeats.
            if not self.cache_warned:
                self.cache_warned = True
                logger.warning("cache: could not store results: %s", exc)

    async def _send_with_retries(
        self, request: PlannedRequest, reservation: Reservation
    ) -> Completion:
        client = self.client
        attempt = 1
        while True:
            started = time.perf_counter()
            used: Usage | None = None
            error: RequestError | None = None
            try:
                parsed, used = await self._attempt(request, attempt, reservation)
            except RequestError as exc:
                error = exc
                if isinstance(exc, RateLimitError):
                    used = Usage()  # a rejected request spent no tokens
            finally:
                self._release(reservation, used)

            if error is None:
                assert used is not None
                return Completion(
                    response=parsed.text,
                    input_tokens=used.input_tokens,
                    output_tokens=used.output_tokens,
                    cost_usd=request.model.cost_usd(used),
                    model=request.model.name,
                    finish_reason=parsed.finish_reason,
                    latency_s=time.perf_counter() - started,
                    attempts=attempt,
                )

            server_wait = usable_server_wait(error.retry_after)
            if isinstance(error, RateLimitError):
                self.stats.rate_limited += 1
                # Everyone on this key waits, this row's retries or not: for
                # the server's wait, or without one for a first backoff step
                # (this row's own backoff grows with its attempts; the key's
                # pause must not, or one unlucky row would hold every job).
                key_wait = server_wait
                if key_wait is None:
                    key_wait = backoff_delay(1, client._rng)
                self.limiter.on_rate_limited(
                    key_wait, error.dimension, sent_at=reservation.sent_at
                )
            if not error.retryable or attempt >= client.max_attempts:
                return self._failed(request, error, attempts=attempt)

            self.stats.retries += 1
            # The server's wait is a hint for one request, not for a herd:
            # the key is paused for it, and this row also backs off on its
            # own schedule so that retries spread out.
            own = max(server_wait or 0.0, retry_delay(attempt, rng=client._rng))
            logger.debug("row %d: %s; retrying in %.2f s", request.first, error, own)
            await asyncio.sleep(own)
            attempt += 1
            await self.job._wait_while_paused()
            try:
                reservation = await self._acquire(request, attempt=attempt)
            except RequestTooLargeError as too_large:
                return self._failed(request, too_large, attempts=attempt - 1)

    def _failed(
        self, request: PlannedRequest, error: RequestError, *, attempts: int
    ) -> Completion:
        """A failed row's result; the first failure is kept for errors='raise'."""
        logger.debug("row %d failed: %s", request.first, error)
        if self.first_error is None:
            self.first_error = error
            if self.raising:
                # The call will raise: requests still in flight would be
                # paid for and thrown away. (Finished rows are cached.)
                current = asyncio.current_task()
                for task in self.tasks:
                    if task is not current:
                        task.cancel()
        return Completion(
            model=request.model.name, attempts=attempts, error=error.message
        )

    def _release(self, reservation: Reservation, used: Usage | None) -> None:
        if used is None:
            # No answer: the server may have counted the whole reservation.
            self.limiter.release(reservation)
            return
        self.limiter.release(
            reservation,
            used.total_tokens,
            actual_input_tokens=used.input_tokens,
            actual_output_tokens=used.output_tokens,
        )

    async def _attempt(
        self, request: PlannedRequest, attempt: int, reservation: Reservation
    ) -> tuple[ParsedResponse, Usage]:
        """Send once. Raises a ``RequestError`` with ``retryable`` set."""
        client = self.client
        model = request.model
        provider = get_provider(model.provider)
        spec = provider.build(
            model, request.messages, self.params, client._key_for(model)
        )
        session = await _runner.get_session()
        where: ErrorContext = {
            "row": request.first,
            "model": model.name,
            "attempt": attempt,
        }
        try:
            async with session.post(
                spec.url,
                json=spec.body,
                headers=dict(spec.headers),
                timeout=aiohttp.ClientTimeout(total=client.timeout),
                proxy=_runner.proxy_for(model.base_url),
            ) as response:
                status = response.status
                headers = response.headers
                body = await response.read()
            self.limiter.observe(
                parse_rate_limit_headers(headers, time.time()), reservation.sent_at
            )
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
            text = body.decode("utf-8", errors="replace")
            message = provider.error_message(status, text)
            error: APIStatusError
            if status == 429:
                error = RateLimitError(message, status=status, **where)
                error.dimension = _rate_limit_dimension(text)
            elif status >= 500:
                error = ServerError(message, status=status, **where)
            else:
                error = APIStatusError(message, status=status, **where)
            error.retryable = is_retryable_status(status, headers)
            error.retry_after = parse_retry_after(headers, time.time())
            raise error

        try:
            # JSON is UTF-8 (RFC 8259); a body that is not is unreadable.
            parsed = provider.parse(json.loads(body.decode("utf-8")))
        except ValueError as exc:
            # A truncated or garbled 200 is a transient server fault.
            raise _retryable(
                APIConnectionError(f"unreadable response body: {exc}", **where)
            ) from exc
        usage = parsed.usage or Usage(
            input_tokens=request.input_estimate,
            output_tokens=count_text_tokens(parsed.text, model.tokenizer),
        )
        return parsed, usage

    def _finish(self, request: PlannedRequest, result: Completion) -> None:
        """Record a request's result on every row it answers.

        Rows after the first share one copy marked cached and costing
        nothing, so a million duplicate rows hold two objects, not a
        million.
        """
        positions = request.positions
        self.results[positions[0]] = result
        if len(positions) > 1:
            duplicate = result if result.error is not None else _served(result)
            for position in positions[1:]:
                self.results[position] = duplicate

        stats = self.stats
        rows = len(positions)
        stats.done += rows
        if result.error is not None:
            stats.failed += rows
            return
        stats.succeeded += rows
        stats.cached += rows if result.cached else rows - 1
        if not result.cached:
            stats.input_tokens += result.input_tokens or 0
            stats.output_tokens += result.output_tokens or 0
            stats.cost_usd += result.cost_usd or 0.0


# Requests being sent by any job in this process, by request key. A job
# that plans the same request (a cell run again while its first run still
# goes, two threads on one frame) waits for that answer instead of paying
# for it twice. Touched only on the engine loop.
_in_flight: dict[str, asyncio.Future[Completion | None]] = {}


def _publish(
    key: str, answer: asyncio.Future[Completion | None], result: Completion | None
) -> None:
    """Hand a request's outcome to whoever waits on it; None: no answer."""
    if _in_flight.get(key) is answer:
        del _in_flight[key]
    if not answer.done():
        answer.set_result(result if result is not None and result.ok else None)


def _served(answer: Completion) -> Completion:
    """``answer`` for a row that did not send its own request: free, cached."""
    return replace(answer, cost_usd=0.0, cached=True, attempts=0, latency_s=0.0)


_MISSING = Completion()
_CANCELLED = Completion(error=CANCELLED)


def _rate_limit_dimension(body_text: str) -> str | None:
    """Which limit a 429's body names (OpenAI says it in ``error.type``)."""
    try:
        kind = json.loads(body_text)["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None
    return kind if kind in ("requests", "tokens") else None


def _retryable(error: RequestError) -> RequestError:
    error.retryable = True
    return error
