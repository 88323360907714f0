"""A local OpenAI-compatible chat-completions server with real rate limits.

For tests, benchmarks and demos without an API key::

    from deluge_nb.sim import serve

    with serve(requests_per_minute=600, tokens_per_minute=60_000) as sim:
        ...  # point a client at sim.base_url ("http://127.0.0.1:PORT/v1")
        sim.stats()["rate_limited"]

or from a shell: ``python -m deluge_nb.sim --port 8000 --rpm 600``.

Endpoints
---------
``POST /v1/chat/completions`` (also ``/chat/completions``)
    ``model`` and ``messages`` required; ``max_tokens`` or
    ``max_completion_tokens`` (default ``SimConfig.default_max_tokens``),
    ``temperature`` accepted. The reply is pseudo-random words, the same for
    the same seed, model, messages and ``max_tokens``: 5 to 60 tokens, cut
    at ``max_tokens`` with ``finish_reason="length"``.
``GET /v1/models``
    One model, ``"sim"``.
``GET /stats``, ``POST /stats/reset``
    The counters of `SimServer.stats`, and zeroing them.

Rate limits
-----------
Counted the way OpenAI counts them: at arrival a request costs 1 request
and prompt tokens + ``max_tokens`` tokens; the unused part of
``max_tokens`` is refunded when the reply completes. Each limit is a bucket
holding ``burst_seconds`` of refill that starts full (see `SimConfig`). A
request either bucket cannot cover gets a 429 whose body names the limit
(``type`` ``"requests"`` or ``"tokens"``) with ``retry-after`` (whole
seconds, at least 1) and ``retry-after-ms``; a 429 consumes nothing. A
request above the tokens-per-minute limit itself can never pass: it gets a
429 "Request too large" with ``x-should-retry: false`` and no retry-after.
Prompt tokens + ``max_tokens`` above the context window get a 400
``context_length_exceeded``, checked before the limits.

Every chat-completions response carries ``x-ratelimit-limit-*``,
``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` (Go-style durations
such as ``"1.5s"`` or ``"6m0s"``) for each limited dimension, unless
``rate_limit_headers=False``. The headers describe the per-minute limit
while a bucket holds only a burst, so remaining is reported as
``limit - (capacity - level)``: the limit minus what the burst has used.

Directives
----------
Tests and demos steer single requests with markers in the content of the
*last user message*: ``[[sim:NAME]]`` or ``[[sim:NAME=VALUE]]``, several
allowed. They count as prompt tokens like any other text. An unknown name
or a bad value gets a 400 with code ``invalid_sim_directive``.

``[[sim:sleep=SECONDS]]``
    Wait this long before answering, on top of the configured latency.
``[[sim:status=CODE]]``
    Answer with this HTTP status (400-599) and an OpenAI-style error body,
    without touching the rate limits. For 429 the answer carries
    ``retry-after`` and ``retry-after-ms`` from ``[[sim:retry_after=SECONDS]]``
    (default 1; ``retry_after=none`` sends neither).
``[[sim:hang]]``
    Admit the request (it consumes its budget) and never answer; the handler
    ends when the client disconnects or the server stops.
``[[sim:echo]]``
    Reply with the last user message itself, directives removed and
    whitespace stripped (cut by words, ``finish_reason="length"``, if it
    exceeds ``max_tokens``).
"""

from deluge_nb.sim._app import SimConfig, make_app
from deluge_nb.sim._serve import SimServer, serve, serve_async

__all__ = ["SimConfig", "SimServer", "make_app", "serve", "serve_async"]
