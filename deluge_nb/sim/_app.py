"""The simulator's aiohttp application and its rate-limit buckets.

Everything here runs on one event loop: the buckets, the counters and the
handlers are plain objects touched only from that loop, so nothing needs a
lock. Time is read through one seam, the ``clock`` given to `make_app`
(the running loop's ``time`` by default), so the bucket arithmetic can be
tested with a fake clock. Latency is the only thing that really sleeps.

The request directives (``[[sim:NAME=VALUE]]``) are described in the
package docstring, `deluge_nb.sim`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
CountMessages = Callable[[Sequence[Mapping[str, Any]], str | None], int]
CountText = Callable[[str, str | None], int]

# Float slack when comparing a refilled level with what a request needs, so
# that exactly one second of refill at 1/s counts as one whole request.
_EPSILON = 1e-9

_MIN_REPLY_TOKENS = 5
_MAX_REPLY_TOKENS = 60

_DIRECTIVE = re.compile(r"\[\[sim:([A-Za-z_]+)(?:=([^\]]*))?\]\]")
_KNOWN_DIRECTIVES = frozenset({"sleep", "status", "retry_after", "hang", "echo"})

# Short, common words; each is a single token with its leading space in the
# OpenAI encodings, so a reply of N words is close to N tokens.
_VOCABULARY = (
    "the", "a", "river", "stone", "light", "data", "model", "answer", "quick",
    "slow", "green", "blue", "table", "frame", "column", "row", "value", "limit",
    "token", "minute", "second", "cloud", "rain", "sun", "north", "south",
    "simple", "clear", "small", "large", "early", "late", "open", "close",
    "read", "write", "send", "wait", "run", "stop", "good", "bad", "new", "old",
    "first", "last", "high", "low", "fast", "calm", "bright", "dark", "warm",
    "cold", "city", "field", "paper", "glass", "bird", "tree", "road", "house",
    "music", "number", "story", "idea", "signal", "queue", "batch", "result",
)  # fmt: skip


@dataclass(frozen=True)
class SimConfig:
    """Settings of one simulated server.

    Parameters
    ----------
    requests_per_minute : float or None
        Requests allowed per minute; ``None`` means unlimited.
    tokens_per_minute : float or None
        Tokens allowed per minute, counted the way OpenAI counts them: prompt
        tokens plus ``max_tokens`` at arrival, the unused part refunded when
        the reply completes. ``None`` means unlimited.
    burst_seconds : float
        Each bucket holds ``limit * burst_seconds / 60`` and refills
        continuously at ``limit / 60`` per second. Buckets start full. A
        small value models providers that reject short bursts well below the
        per-minute figure.
    latency_s : float
        Seconds before the reply starts (time to first token).
    latency_per_output_token_s : float
        Extra seconds per completion token.
    context_window : int
        Prompt tokens plus ``max_tokens`` above this get a 400
        ``context_length_exceeded``.
    rate_limit_headers : bool
        Send the ``x-ratelimit-*`` headers on every response.
    seed : int
        Seed of the deterministic replies.
    default_max_tokens : int
        ``max_tokens`` assumed when a request gives none.
    tokenizer : str or None
        Encoding passed to `deluge_nb._tokens` (``None`` selects its
        labelled approximation).
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_seconds: float = 2.0
    latency_s: float = 0.0
    latency_per_output_token_s: float = 0.0
    context_window: int = 8192
    rate_limit_headers: bool = True
    seed: int = 0
    default_max_tokens: int = 64
    tokenizer: str | None = "o200k_base"

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")
        if not self.burst_seconds > 0:
            raise ValueError(
                f"burst_seconds must be positive, got {self.burst_seconds}"
            )
        if self.latency_s < 0 or self.latency_per_output_token_s < 0:
            raise ValueError("latencies must not be negative")
        if self.context_window < 1 or self.default_max_tokens < 1:
            raise ValueError("context_window and default_max_tokens must be >= 1")


class Bucket:
    """A continuously refilling bucket measured against a per-minute limit.

    The bucket holds ``capacity = limit * burst_seconds / 60`` units, starts
    full and refills at ``limit / 60`` units per second. A request may take
    its amount when the level covers it. An amount larger than the capacity
    (but not larger than the limit) is let through when the bucket is full
    and leaves the level negative, so the debt is paid back by refill
    before anything else passes; without this, a request bigger than the
    burst could never succeed.

    Parameters
    ----------
    limit : float
        Units per minute.
    burst_seconds : float
        Seconds of refill the bucket can hold.
    clock : callable
        Returns the current time in seconds; read on every operation and
        nowhere else.
    """

    def __init__(self, limit: float, burst_seconds: float, clock: Clock) -> None:
        self._clock = clock
        self._updated: float | None = None
        self.limit = 0.0
        self.capacity = 0.0
        self._level = 0.0
        self.reconfigure(limit, burst_seconds)

    @property
    def rate(self) -> float:
        """Refill rate in units per second."""
        return self.limit / 60.0

    def reconfigure(self, limit: float, burst_seconds: float) -> None:
        """Change the limit, keeping the bucket as full (as a fraction) as it was.

        Parameters
        ----------
        limit : float
            New units per minute.
        burst_seconds : float
            New burst window.
        """
        if not limit > 0 or not burst_seconds > 0:
            raise ValueError("limit and burst_seconds must be positive")

        new_capacity = limit * burst_seconds / 60.0
        if self.capacity > 0:
            self._refill()
            self._level = self._level / self.capacity * new_capacity
        else:
            self._level = new_capacity
        self.limit = float(limit)
        self.capacity = new_capacity

    def level(self) -> float:
        """Units in the bucket now (negative while paying back a large request)."""
        self._refill()
        return self._level

    def wait_time(self, amount: float) -> float:
        """Seconds until `amount` can be taken; ``0.0`` if it can be taken now.

        Parameters
        ----------
        amount : float
            Units the request needs.

        Returns
        -------
        float
            Seconds of refill still needed.
        """
        needed = min(amount, self.capacity)
        deficit = needed - self.level()
        if deficit <= _EPSILON * max(1.0, needed):
            return 0.0
        return deficit / self.rate

    def take(self, amount: float) -> None:
        """Remove `amount` unconditionally (call `wait_time` first)."""
        self._refill()
        self._level -= amount

    def give_back(self, amount: float) -> None:
        """Return `amount` units, never beyond the capacity."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)

    def time_to_full(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level()) / self.rate)

    def remaining(self) -> int:
        """What is left of the per-minute limit, as the headers report it.

        The headers describe the per-minute limit while the bucket holds only
        a burst's worth, so the amount used (``capacity - level``) is
        subtracted from the limit: ``remaining = limit - (capacity - level)``,
        floored and clamped to ``[0, limit]``. A full bucket reports the whole
        limit; an empty one ``limit - capacity``. Use the reset header (time
        until full) to see how soon the burst is available again.
        """
        value = self.limit - (self.capacity - self.level())
        return max(0, min(math.floor(self.limit), math.floor(value + _EPSILON)))

    def _refill(self) -> None:
        now = self._clock()
        if self._updated is not None and now > self._updated:
            refill = (now - self._updated) * self.rate
            self._level = min(self.capacity, self._level + refill)
        if self._updated is None or now > self._updated:
            self._updated = now


def format_go_duration(seconds: float) -> str:
    """Format a duration the way Go's ``time.Duration.String`` does.

    This is the format of OpenAI's ``x-ratelimit-reset-*`` headers.

    Parameters
    ----------
    seconds : float
        The duration; negative values format as ``"0s"``.

    Returns
    -------
    str
        For example ``"12ms"``, ``"1s"``, ``"6m0s"``, ``"1m30.5s"``,
        ``"1h0m0s"``.
    """
    nanos = round(seconds * 1e9)
    if nanos <= 0:
        return "0s"
    if nanos < 1_000:
        return f"{nanos}ns"
    if nanos < 1_000_000:
        return _decimal(nanos, 1_000) + "µs"
    if nanos < 1_000_000_000:
        return _decimal(nanos, 1_000_000) + "ms"

    hours, rest = divmod(nanos, 3_600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _decimal(rest, 10**9) + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def _decimal(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    width = len(str(unit)) - 1
    return f"{whole}.{fraction:0{width}d}".rstrip("0")


def _ceil_ms(seconds: float) -> float:
    """Round a wait up to whole milliseconds, so a header never says too little."""
    return math.ceil(seconds * 1000 - 1e-6) / 1000


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class Stats:
    """Counters of one server; see `SimServer.stats` for the fields."""

    def __init__(self) -> None:
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
        }


class SimState:
    """Everything one running app owns: config, buckets, counters.

    Only touched from the app's event loop.
    """

    def __init__(
        self,
        config: SimConfig,
        clock: Clock,
        count_messages: CountMessages,
        count_text: CountText,
    ) -> None:
        self.config = config
        self.clock = clock
        self.count_messages = count_messages
        self.count_text = count_text
        self.stats = Stats()
        self.started_at: float | None = None
        self.stopping = asyncio.Event()
        self.requests_bucket = self._bucket(config.requests_per_minute)
        self.tokens_bucket = self._bucket(config.tokens_per_minute)

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
    ) -> None:
        """Replace both limits; a bucket that stays limited keeps its fill."""
        config = dataclasses.replace(
            self.config,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )
        self.requests_bucket = self._rebucket(self.requests_bucket, requests_per_minute)
        self.tokens_bucket = self._rebucket(self.tokens_bucket, tokens_per_minute)
        self.config = config
        logger.info(
            "sim limits now %s requests/min, %s tokens/min",
            requests_per_minute,
            tokens_per_minute,
        )

    def since_start(self, when: float) -> float:
        """Seconds from server start to `when` (a clock reading)."""
        return when - (self.started_at if self.started_at is not None else when)


STATE_KEY = web.AppKey("deluge_nb_sim_state", SimState)


class _Reject(Exception):
    """Raised inside the handler to answer with an error response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _default_clock() -> float:
    return asyncio.get_running_loop().time()


def make_app(
    config: SimConfig | None = None, *, clock: Clock | None = None
) -> web.Application:
    """Build the simulator as an aiohttp application.

    Parameters
    ----------
    config : SimConfig, optional
        Limits, latency and reply settings; defaults to ``SimConfig()``.
    clock : callable, optional
        Time source of the buckets and of ``admitted_times``; defaults to the
        running loop's ``time``. Latency still really sleeps.

    Returns
    -------
    aiohttp.web.Application
        Serve it with ``web.run_app`` or an ``AppRunner``. Pass
        ``handler_cancellation=True`` so the ``hang`` directive ends when
        its client disconnects (`serve` and the CLI do).
    """
    from deluge_nb._tokens import count_message_tokens, count_text_tokens

    state = SimState(
        config or SimConfig(),
        clock or _default_clock,
        count_message_tokens,
        count_text_tokens,
    )
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATE_KEY] = state
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/models", _models)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/stats/reset", _reset_stats)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_startup(app: web.Application) -> None:
    state = app[STATE_KEY]
    state.started_at = state.clock()
    # Load the encoding now rather than inside the first timed request.
    state.count_text("warm up", state.config.tokenizer)


async def _on_shutdown(app: web.Application) -> None:
    # Wake sleeping and hanging handlers so shutdown does not wait for them.
    app[STATE_KEY].stopping.set()


async def _models(request: web.Request) -> web.Response:
    model = {"id": "sim", "object": "model", "created": 0, "owned_by": "deluge_nb"}
    return web.json_response({"object": "list", "data": [model]})


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].stats.snapshot())


async def _reset_stats(request: web.Request) -> web.Response:
    stats = request.app[STATE_KEY].stats
    stats.reset()
    return web.json_response(stats.snapshot())


async def _chat_completions(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    stats = state.stats
    arrival = state.clock()
    stats.requests += 1
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        try:
            response, usage = await _complete(request, state)
        except _Reject as reject:
            response, usage = reject.response, None
        except Exception:
            # A bug here must still look like a provider's 500 to the client.
            logger.exception("sim failed to handle a request")
            response = _error(500, "The simulator failed.", type_="server_error")
            usage = None
    except asyncio.CancelledError:
        stats.disconnected += 1
        logger.debug("sim client disconnected before the reply")
        raise
    finally:
        stats.in_flight -= 1

    if response.status == 200 and usage is not None:
        stats.ok += 1
        stats.prompt_tokens += usage["prompt_tokens"]
        stats.completion_tokens += usage["completion_tokens"]
        stats.admitted_times.append(state.since_start(arrival))
    else:
        if response.status == 429:
            stats.rate_limited += 1
        by_status = stats.errors_by_status
        by_status[response.status] = by_status.get(response.status, 0) + 1

    if state.config.rate_limit_headers:
        response.headers.update(_rate_limit_headers(state))
    return response


def _rate_limit_headers(state: SimState) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, bucket in (
        ("requests", state.requests_bucket),
        ("tokens", state.tokens_bucket),
    ):
        if bucket is None:
            continue
        headers[f"x-ratelimit-limit-{name}"] = str(math.floor(bucket.limit))
        headers[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining())
        reset = format_go_duration(_ceil_ms(bucket.time_to_full()))
        headers[f"x-ratelimit-reset-{name}"] = reset
    return headers


async def _complete(
    request: web.Request, state: SimState
) -> tuple[web.Response, dict[str, Any]]:
    config = state.config
    body = await _read_body(request)
    model, messages, max_tokens = _validate(body, config)
    directives, last_user_text = _directives(messages)

    extra_sleep = _float_directive(directives, "sleep") or 0.0
    if "status" in directives:
        forced = _forced_status(directives)
        await _sleep(state, extra_sleep)
        raise _Reject(forced)

    prompt_tokens = state.count_messages(messages, config.tokenizer)
    if prompt_tokens + max_tokens > config.context_window:
        raise _Reject(
            _error(
                400,
                f"This model's maximum context length is {config.context_window} "
                f"tokens. However, you requested {prompt_tokens + max_tokens} "
                f"tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or "
                "completion.",
                code="context_length_exceeded",
                param="messages",
            )
        )

    reserved = prompt_tokens + max_tokens
    _admit(state, reserved)
    if "hang" in directives:
        logger.debug("sim hanging on request as asked")
        await _sleep(state, math.inf)

    if "echo" in directives:
        text, completion_tokens, finish = _echo_reply(
            last_user_text, max_tokens, state.count_text, config.tokenizer
        )
    else:
        text, completion_tokens, finish = _generated_reply(
            (config.seed, model, messages, max_tokens),
            max_tokens,
            state.count_text,
            config.tokenizer,
        )

    latency = config.latency_s + config.latency_per_output_token_s * completion_tokens
    await _sleep(state, latency + extra_sleep)
    if state.tokens_bucket is not None:
        state.tokens_bucket.give_back(max(0, max_tokens - completion_tokens))

    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    reply = {
        "id": f"chatcmpl-sim{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }
    return web.json_response(reply), usage


async def _read_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _Reject(
            _error(
                400,
                "We could not parse the JSON body of your request.",
                code="invalid_json",
            )
        ) from None


def _validate(body: Any, config: SimConfig) -> tuple[str, list[Any], int]:
    """Check the request body; return model, messages and max_tokens."""
    if not isinstance(body, dict):
        raise _Reject(_error(400, "The request body must be a JSON object."))

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Reject(_missing("model"))

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Reject(_missing("messages"))
    for index, message in enumerate(messages):
        ok = (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str | list | type(None))
        )
        if not ok:
            raise _Reject(
                _error(
                    400,
                    f"Invalid value for 'messages[{index}]': expected an object "
                    "with a string 'role' and a string or list 'content'.",
                    code="invalid_value",
                    param=f"messages[{index}]",
                )
            )

    if body.get("stream"):
        raise _Reject(
            _error(400, "The simulator does not support stream=true.", param="stream")
        )

    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
    ):
        raise _Reject(
            _error(400, "'temperature' must be a number.", param="temperature")
        )

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = config.default_max_tokens
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or max_tokens < 1
    ):
        raise _Reject(
            _error(
                400,
                f"Invalid 'max_tokens': {max_tokens!r}; expected an integer >= 1.",
                code="invalid_value",
                param="max_tokens",
            )
        )
    return model, messages, max_tokens


def _missing(param: str) -> web.Response:
    return _error(
        400,
        f"Missing required parameter: '{param}'.",
        code="missing_required_parameter",
        param=param,
    )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(parts)
    return ""


def _directives(messages: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], str]:
    """Directives of the last user message, and its text without them."""
    last = next(
        (m for m in reversed(messages) if m.get("role") == "user"), {"content": ""}
    )
    text = _content_text(last.get("content"))
    found: dict[str, str] = {}
    for match in _DIRECTIVE.finditer(text):
        name, value = match.group(1).lower(), match.group(2)
        if name not in _KNOWN_DIRECTIVES:
            raise _Reject(_bad_directive(f"unknown directive [[sim:{name}]]"))
        found[name] = "" if value is None else value.strip()
    return found, _DIRECTIVE.sub("", text).strip()


def _bad_directive(message: str) -> web.Response:
    return _error(
        400, f"Invalid simulator directive: {message}.", code="invalid_sim_directive"
    )


def _float_directive(directives: Mapping[str, str], name: str) -> float | None:
    if name not in directives:
        return None
    value = directives[name]
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number >= 0 or math.isinf(number):
        raise _Reject(_bad_directive(f"{name}={value!r} is not a number of seconds"))
    return number


def _forced_status(directives: Mapping[str, str]) -> web.Response:
    value = directives["status"]
    try:
        status = int(value)
    except ValueError:
        status = 0
    if not 400 <= status <= 599:
        raise _Reject(_bad_directive(f"status={value!r} is not an HTTP error status"))

    logger.debug("sim answering %d as asked", status)
    headers: dict[str, str] = {}
    if status == 429:
        message = "Rate limit reached (simulated by a [[sim:status=429]] directive)."
        type_, code = "requests", "rate_limit_exceeded"
        if directives.get("retry_after", "").lower() != "none":
            retry = _float_directive(directives, "retry_after")
            retry = 1.0 if retry is None else retry
            headers["retry-after"] = str(math.ceil(retry))
            headers["retry-after-ms"] = str(round(retry * 1000))
            message += f" Please try again in {format_go_duration(retry)}."
    elif status >= 500:
        message = f"The server had an error (simulated status {status})."
        type_, code = "server_error", "simulated_error"
    else:
        message = f"Simulated error with status {status}."
        type_, code = "invalid_request_error", "simulated_error"
    return _error(status, message, type_=type_, code=code, headers=headers)


def _admit(state: SimState, reserved_tokens: int) -> None:
    """Take one request and `reserved_tokens` from the buckets, or raise a 429."""
    tokens = state.tokens_bucket
    if tokens is not None and reserved_tokens > tokens.limit:
        raise _Reject(
            _error(
                429,
                "Request too large for tokens per min: Limit "
                f"{_number(tokens.limit)}, Requested {reserved_tokens}. The input "
                "or output tokens must be reduced in order to run successfully.",
                type_="tokens",
                code="rate_limit_exceeded",
                headers={"x-should-retry": "false"},
            )
        )

    waits = []
    for name, bucket, amount in (
        ("requests", state.requests_bucket, 1),
        ("tokens", tokens, reserved_tokens),
    ):
        if bucket is not None:
            wait = bucket.wait_time(amount)
            if wait > 0:
                waits.append((wait, name, bucket, amount))
    if waits:
        wait, name, bucket, amount = max(waits, key=lambda item: item[0])
        wait = _ceil_ms(wait)
        used = math.floor(bucket.limit) - bucket.remaining()
        logger.debug("sim 429 on %s: wait %.3f s", name, wait)
        raise _Reject(
            _error(
                429,
                f"Rate limit reached for {name} per min: Limit "
                f"{_number(bucket.limit)}, Used {used}, Requested {amount}. "
                f"Please try again in {format_go_duration(wait)}.",
                type_=name,
                code="rate_limit_exceeded",
                headers={
                    "retry-after": str(max(1, math.ceil(wait))),
                    "retry-after-ms": str(max(1, round(wait * 1000))),
                },
            )
        )

    if state.requests_bucket is not None:
        state.requests_bucket.take(1)
    if tokens is not None:
        tokens.take(reserved_tokens)


async def _sleep(state: SimState, seconds: float) -> None:
    """Sleep, but give up with a 503 if the server starts shutting down."""
    if seconds <= 0:
        return
    timeout = None if math.isinf(seconds) else seconds
    try:
        await asyncio.wait_for(state.stopping.wait(), timeout)
    except asyncio.TimeoutError:
        return
    raise _Reject(_error(503, "The simulator is shutting down.", type_="server_error"))


def _generated_reply(
    key: Any, max_tokens: int, count_text: CountText, tokenizer: str | None
) -> tuple[str, int, str]:
    """Pseudo-random words, the same for the same `key`."""
    encoded = json.dumps(key, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.sha256(encoded.encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    wanted = rng.randint(_MIN_REPLY_TOKENS, _MAX_REPLY_TOKENS)
    budget = min(wanted, max_tokens)
    words = [rng.choice(_VOCABULARY) for _ in range(budget)]
    if words:
        words[0] = words[0].capitalize()
    text, tokens = _fit(words, budget, count_text, tokenizer)
    return text, tokens, "length" if wanted > max_tokens else "stop"


def _echo_reply(
    text: str, max_tokens: int, count_text: CountText, tokenizer: str | None
) -> tuple[str, int, str]:
    """The user's text back, cut by words if it exceeds `max_tokens`."""
    tokens = count_text(text, tokenizer)
    if tokens <= max_tokens:
        return text, tokens, "stop"
    cut, tokens = _fit(text.split(), max_tokens, count_text, tokenizer)
    return cut, tokens, "length"


def _fit(
    words: list[str], budget: int, count_text: CountText, tokenizer: str | None
) -> tuple[str, int]:
    """Drop words from the end until the text has at most `budget` tokens."""
    text = " ".join(words)
    tokens = count_text(text, tokenizer)
    while tokens > budget and words:
        # Drop as many words as the excess is worth at the average tokens per
        # word (rounded down), so the loop ends in a few counts and keeps as
        # much text as fits.
        drop = max(1, (tokens - budget) * len(words) // tokens)
        del words[-drop:]
        text = " ".join(words)
        tokens = count_text(text, tokenizer)
    return text, tokens
