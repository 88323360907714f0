"""A local LLM API server with real rate limits and injectable faults.

It speaks OpenAI chat completions and Anthropic Messages, so a job can be
rehearsed (limits, retries, failures, cost) before paying for it, and tests,
benchmarks and demos run without an API key::

    from deluge_nb.sim import serve

    with serve(requests_per_minute=600, tokens_per_minute=60_000) as sim:
        ...  # point a client at sim.base_url ("http://127.0.0.1:PORT/v1")
        sim.stats()["rate_limited"]

or from a shell: ``python -m deluge_nb.sim --port 8000 --rpm 600`` (see
``--help``; ``--fault 529=0.05`` injects faults).

Endpoints
---------
``POST /v1/chat/completions`` (also ``/chat/completions``)
    OpenAI format. ``model`` and ``messages`` required; ``max_tokens`` or
    ``max_completion_tokens`` (default ``SimConfig.default_max_tokens``),
    ``temperature`` accepted. Errors are ``{"error": {"message", "type",
    "param", "code"}}``.
``POST /v1/messages`` (also ``/messages``)
    Anthropic format. ``model``, ``max_tokens`` and ``messages`` (roles
    ``user`` and ``assistant``) required; ``system`` (a string or a list of
    text blocks) and ``temperature`` (0 to 1) accepted; the ``x-api-key``
    header is accepted, never checked and never logged. The reply is a
    ``message`` with one text block and ``stop_reason`` ``"end_turn"`` or
    ``"max_tokens"``; ``usage`` has ``input_tokens``, ``output_tokens`` and
    zero cache counts. Errors are ``{"type": "error", "error": {"type",
    "message"}}`` with Anthropic's types (``invalid_request_error``,
    ``rate_limit_error``, ``api_error``, ``overloaded_error`` for 529, ...).
``GET /v1/models``
    One model, ``"sim"``.
``GET /stats``, ``POST /stats/reset``
    The counters of `SimServer.stats`, and zeroing them.

Replies are pseudo-random words derived from a hash of the seed and the
request (model, messages, system prompt, ``max_tokens``), never from a
shared random generator: the same seed and request give the same words
whatever else happens on the server. A reply is 5 to 60 tokens, cut at
``max_tokens``. Prompt tokens are counted with `SimConfig.tokenizer` and
the chat framing of `deluge_nb._tokens`, a top-level ``system`` counting as
a system message. Each reply waits ``latency_s`` plus
``latency_per_output_token_s`` per output token.

Rate limits
-----------
Each limit is a bucket holding ``burst_seconds`` of refill that starts full
(see `SimConfig`). The two formats have separate buckets, as two providers
would; ``requests_per_minute`` sizes the requests bucket of each.

OpenAI format: at arrival a request costs 1 request and prompt tokens +
``max_tokens`` from ``tokens_per_minute``; the unused part of
``max_tokens`` is refunded when the reply completes.

Anthropic format: at arrival a request costs 1 request, its input tokens
from ``input_tokens_per_minute`` and ``max_tokens`` from
``output_tokens_per_minute``; the unused part of ``max_tokens`` goes back
to the output bucket when the reply completes.

A request a bucket cannot cover gets a 429 that names the limit and
carries ``retry-after`` (whole seconds, at least 1; OpenAI format adds
``retry-after-ms``); a 429 consumes nothing. A request larger than a
per-minute limit itself can never pass: it gets a 429 "Request too large"
with ``x-should-retry: false`` and no retry-after. Prompt tokens +
``max_tokens`` above the context window get a 400, checked before the
limits.

Unless ``rate_limit_headers=False``, every response carries, per limited
dimension, ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (OpenAI;
resets are Go durations such as ``"1.5s"`` or ``"6m0s"``) or
``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,
remaining,reset}`` plus ``anthropic-ratelimit-tokens-*`` repeating the most
restrictive of input and output (Anthropic; resets are RFC 3339 UTC stamps
such as ``"2026-12-03T16:20:05Z"``: wall-clock time plus the time until the
bucket is full, rounded up to the second). Remaining is reported as
``limit - (capacity - level)``: the per-minute limit minus what the burst
has used.

Faults
------
``SimConfig.faults`` maps a fault kind to the probability that a request
gets it. Each request draws one number from ``random.Random(seed)`` when it
arrives, so the faults are the same for the same seed and arrival order.
Faults are answered without touching the rate limits (except ``hang``) and
are counted in ``stats()["faults"]``; a request carrying a directive never
gets one.

``"500"``, ``"502"``, ``"503"``, ``"529"``
    That status at once, with an error body in the request's format.
``"429"``
    A 429 with ``retry-after`` (whole seconds, rounded up) and
    ``retry-after-ms`` from ``SimConfig.fault_retry_after_s``.
``"reset"``
    The connection is closed without a response; the client sees a
    connection error, not a status.
``"hang"``
    Admitted (it takes its budget) and never answered, until the client
    gives up or the server stops.
``"truncated"``
    After the usual latency, a 200 ``application/json`` whose body is the
    normal reply cut in half.
``"429_storm"``
    Starts a storm of ``SimConfig.storm_s`` seconds (server clock) during
    which every request, this one included, gets a 429 whose
    ``retry-after``/``retry-after-ms`` say when the storm ends.

Directives
----------
Tests and demos steer single requests with markers in the content of the
*last user message*: ``[[sim:NAME]]`` or ``[[sim:NAME=VALUE]]``, several
allowed. They count as prompt tokens like any other text, and they work
the same in both formats. An unknown name or a bad value gets a 400 (code
``invalid_sim_directive`` in the OpenAI format).

``[[sim:sleep=SECONDS]]``
    Wait this long before answering, on top of the configured latency.
``[[sim:status=CODE]]``
    Answer with this HTTP status (400-599) and an error body, without
    touching the rate limits. For 429 the answer carries ``retry-after``
    and ``retry-after-ms`` from ``[[sim:retry_after=SECONDS]]`` (default 1;
    ``retry_after=none`` sends neither).
``[[sim:hang]]``
    Admit the request (it consumes its budget) and never answer; the handler
    ends when the client disconnects or the server stops.
``[[sim:echo]]``
    Reply with the last user message itself, directives removed and
    whitespace stripped (cut by words, ``finish_reason="length"``, if it
    exceeds ``max_tokens``).
"""

from deluge_nb.sim._app import make_app
from deluge_nb.sim._config import SimConfig
from deluge_nb.sim._serve import SimServer, serve, serve_async

__all__ = ["SimConfig", "SimServer", "make_app", "serve", "serve_async"]
