"""The simulator's aiohttp application: routes and the shared chat handler.

Every chat request, whatever its wire format, goes through `_chat`, which
runs the same steps in the same order:

1. draw the request's fault number (so faults follow the arrival order);
2. read and validate the body (400 in the format's shape if invalid);
3. apply directives: ``status`` answers at once, ``sleep``, ``hang`` and
   ``echo`` shape what follows; a request with any directive is never
   given an injected fault;
4. count the prompt and check the context window (400);
5. inject a fault, if one was drawn: it answers without touching the rate
   limits, except ``hang``, which is admitted first;
6. take the rate limits (429 if a bucket cannot cover the request);
7. compose the reply, sleep the latency, refund unused output tokens.

The formats themselves live in `deluge_nb.sim._openai` and
`deluge_nb.sim._anthropic`; the buckets in `deluge_nb.sim._bucket`; the
fault dice in `deluge_nb.sim._faults`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from deluge_nb.sim._anthropic import AnthropicFormat
from deluge_nb.sim._bucket import Clock, ceil_ms, format_go_duration
from deluge_nb.sim._config import SimConfig
from deluge_nb.sim._directives import (
    DirectiveError,
    find_directives,
    forced_status,
    seconds_directive,
)
from deluge_nb.sim._faults import Fault
from deluge_nb.sim._openai import OpenAIFormat
from deluge_nb.sim._reply import echo_reply, generated_reply
from deluge_nb.sim._state import STATE_KEY, ShuttingDown, SimState
from deluge_nb.sim._wire import ChatRequest, Reject, WireFormat

logger = logging.getLogger(__name__)

_OPENAI = OpenAIFormat()
_ANTHROPIC = AnthropicFormat()

_FAULT_MESSAGES = {
    "500": "The server had an error while processing the request.",
    "502": "Bad gateway: the upstream server returned an invalid response.",
    "503": "The service is temporarily unavailable.",
    "529": "Overloaded.",
}


@dataclass(frozen=True)
class _Outcome:
    """How a chat request ended, for the counters.

    Attributes
    ----------
    response : aiohttp.web.Response
        What to send (ignored when ``dropped``).
    usage : tuple of (int, int), optional
        Input and output tokens of a complete 200 reply.
    counted : bool
        Whether ``response.status`` goes into ``errors_by_status``; False
        for the deliberately broken 200 of a ``truncated`` fault.
    dropped : bool
        The connection was closed without an answer (a ``reset`` fault).
    """

    response: web.Response
    usage: tuple[int, int] | None = None
    counted: bool = True
    dropped: bool = False


def make_app(
    config: SimConfig | None = None,
    *,
    clock: Clock | None = None,
    wall_clock: Clock | None = None,
) -> web.Application:
    """Build the simulator as an aiohttp application.

    Parameters
    ----------
    config : SimConfig, optional
        Limits, latency, faults and reply settings; defaults to
        ``SimConfig()``.
    clock : callable, optional
        Monotonic time source of the buckets, the storms and
        ``admitted_times``; defaults to the running loop's ``time``.
        Latency still really sleeps.
    wall_clock : callable, optional
        Unix time source of the RFC 3339 reset stamps in the Anthropic
        headers; defaults to `time.time`.

    Returns
    -------
    aiohttp.web.Application
        Serve it with ``web.run_app`` or an ``AppRunner``. Pass
        ``handler_cancellation=True`` so hanging requests end when their
        client disconnects (`serve` and the CLI do).
    """
    from deluge_nb._tokens import count_message_tokens, count_text_tokens

    state = SimState(
        config or SimConfig(),
        clock or _default_clock,
        wall_clock or time.time,
        count_message_tokens,
        count_text_tokens,
    )
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATE_KEY] = state
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", _chat_completions)
        app.router.add_post(f"{prefix}/messages", _messages)
        app.router.add_get(f"{prefix}/models", _models)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/stats/reset", _reset_stats)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app


def _default_clock() -> float:
    return asyncio.get_running_loop().time()


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
    return await _chat(request, _OPENAI)


async def _messages(request: web.Request) -> web.Response:
    return await _chat(request, _ANTHROPIC)


async def _chat(request: web.Request, wire: WireFormat) -> web.Response:
    state = request.app[STATE_KEY]
    stats = state.stats
    arrival = state.clock()
    draw = state.faults.draw()
    stats.arrived(wire.name)
    try:
        try:
            outcome = await _respond(request, state, wire, arrival, draw)
        except Reject as reject:
            outcome = _Outcome(reject.response)
        except DirectiveError as exc:
            outcome = _Outcome(
                wire.error(
                    400,
                    f"Invalid simulator directive: {exc}.",
                    code="invalid_sim_directive",
                )
            )
        except ShuttingDown:
            outcome = _Outcome(wire.error(503, "The simulator is shutting down."))
        except Exception:
            # A bug here must still look like a provider's 500 to the client.
            logger.exception("sim failed to handle a request")
            outcome = _Outcome(wire.error(500, "The simulator failed."))
    except asyncio.CancelledError:
        stats.disconnected += 1
        logger.debug("sim client disconnected before the reply")
        raise
    finally:
        stats.in_flight -= 1

    response = outcome.response
    if outcome.dropped:
        return response
    if outcome.usage is not None:
        input_tokens, output_tokens = outcome.usage
        when = state.since_start(arrival)
        stats.succeeded(wire.name, input_tokens, output_tokens, when)
    elif outcome.counted:
        stats.answered(wire.name, response.status)

    if state.config.rate_limit_headers:
        response.headers.update(wire.limit_headers(state))
    return response


async def _respond(
    request: web.Request,
    state: SimState,
    wire: WireFormat,
    arrival: float,
    draw: float,
) -> _Outcome:
    config = state.config
    chat = wire.parse(await _read_json(request, wire), config)
    directives, last_user_text = find_directives(chat.messages)

    extra_sleep = seconds_directive(directives, "sleep") or 0.0
    forced = forced_status(directives)
    if forced is not None:
        logger.debug("sim answering %d as asked", forced.status)
        await state.sleep(extra_sleep)
        response = wire.error(
            forced.status, forced.message, code=forced.code, headers=forced.headers
        )
        return _Outcome(response)

    input_tokens = state.count_messages(chat.counted, config.tokenizer)
    if input_tokens + chat.max_tokens > config.context_window:
        raise Reject(
            wire.context_error(input_tokens, chat.max_tokens, config.context_window)
        )

    # Directives decide their request's fate; injected faults never override.
    fault = None if directives else state.faults.pick(draw, arrival)
    if fault is not None and fault.kind != "hang":
        return await _inject(request, state, wire, chat, input_tokens, fault)

    wire.admit(state, input_tokens, chat.max_tokens)
    if fault is not None:
        state.stats.injected(fault.kind)
    if fault is not None or "hang" in directives:
        logger.debug("sim hanging on a request")
        await state.sleep(math.inf)

    if "echo" in directives:
        text, output_tokens, finish = echo_reply(
            last_user_text, chat.max_tokens, state.count_text, config.tokenizer
        )
    else:
        text, output_tokens, finish = generated_reply(
            chat.content_key, chat.max_tokens, state.count_text, config.tokenizer
        )

    await state.sleep(_latency(config, output_tokens) + extra_sleep)
    wire.settle(state, chat.max_tokens, output_tokens)
    body = wire.reply(chat, text, input_tokens, output_tokens, finish)
    return _Outcome(web.json_response(body), usage=(input_tokens, output_tokens))


async def _inject(
    request: web.Request,
    state: SimState,
    wire: WireFormat,
    chat: ChatRequest,
    input_tokens: int,
    fault: Fault,
) -> _Outcome:
    """Answer with `fault` instead of a reply; the buckets are not touched."""
    state.stats.injected(fault.kind, started_storm=fault.started_storm)
    logger.debug("sim injecting fault %s", fault.kind)

    if fault.kind == "reset":
        # Close before a byte of the response is written: the client sees
        # the connection drop, not an HTTP status. The response returned
        # is never sent.
        if request.transport is not None:
            request.transport.close()
        return _Outcome(web.Response(), dropped=True)

    if fault.kind == "truncated":
        config = state.config
        text, output_tokens, finish = generated_reply(
            chat.content_key, chat.max_tokens, state.count_text, config.tokenizer
        )
        await state.sleep(_latency(config, output_tokens))
        whole = json.dumps(
            wire.reply(chat, text, input_tokens, output_tokens, finish)
        ).encode()
        response = web.Response(
            body=whole[: len(whole) // 2], content_type="application/json"
        )
        return _Outcome(response, counted=False)

    status = fault.status
    if status is None:  # pragma: no cover - every other kind has a status
        raise AssertionError(f"fault {fault.kind!r} has no status")
    if fault.retry_after is None:
        return _Outcome(wire.error(status, _FAULT_MESSAGES[fault.kind]))

    wait = ceil_ms(fault.retry_after)
    cause = "a 429 storm" if fault.kind != "429" else "an injected fault"
    message = (
        f"Rate limit reached (simulated: {cause}). Please try again in "
        f"{format_go_duration(wait)}."
    )
    headers = {
        "retry-after": str(math.ceil(wait)),
        "retry-after-ms": str(round(wait * 1000)),
    }
    return _Outcome(wire.error(429, message, headers=headers))


def _latency(config: SimConfig, output_tokens: int) -> float:
    return config.latency_s + config.latency_per_output_token_s * output_tokens


async def _read_json(request: web.Request, wire: WireFormat) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise Reject(
            wire.error(
                400,
                "We could not parse the JSON body of your request.",
                code="invalid_json",
            )
        ) from None
