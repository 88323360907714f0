"""Run the simulator in-process: in a daemon thread, or on the caller's loop.

`serve` starts the server on its own event loop in a background thread, so a
notebook cell, a synchronous test or a benchmark can talk to it over real
HTTP. `serve_async` runs it on the loop already running, for async code.
Both hand back a `SimServer`, whose methods are safe to call from any
thread: they hop onto the server's loop, where all of its state lives.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable
from types import EllipsisType, TracebackType
from typing import Any, TypeVar

from aiohttp import web

from deluge_nb.sim._app import make_app
from deluge_nb.sim._bucket import Clock
from deluge_nb.sim._config import SimConfig
from deluge_nb.sim._state import STATE_KEY, SimState

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# A backstop only: shutdown wakes sleeping and hanging handlers at once.
_SHUTDOWN_TIMEOUT_S = 5.0
_THREAD_TIMEOUT_S = 10.0


class SimServer:
    """Handle to a running simulator.

    Get one from `serve` (a background thread; use it as a context manager
    or call `close`) or from ``async with serve_async(...)``.

    Attributes
    ----------
    host : str
        The address the server listens on.
    port : int
        The bound port (the free port picked when 0 was asked for).
    """

    def __init__(
        self,
        state: SimState,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._state = state
        self._loop = loop
        self._on_close = on_close
        self._closed = False
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """Root URL, for example ``"http://127.0.0.1:50123"``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API root, ``url + "/v1"``; give it to a client.

        OpenAI clients post to ``base_url + "/chat/completions"``, Anthropic
        clients to ``base_url + "/messages"``.
        """
        return f"{self.url}/v1"

    @property
    def config(self) -> SimConfig:
        """The settings in force, limits changed by `set_limits` included."""
        return self._state.config

    @property
    def closed(self) -> bool:
        """Whether the server has been stopped."""
        return self._closed

    def stats(self) -> dict[str, Any]:
        """Return the server's counters (the body of ``GET /stats``).

        Returns
        -------
        dict
            ``requests`` (every chat POST, both formats), ``ok`` (complete
            200s), ``rate_limited`` (429s, injected ones included),
            ``errors_by_status`` (status -> count for every non-200 answer,
            429s included; int keys here, string keys in the JSON),
            ``disconnected`` (clients gone before their reply), ``in_flight``,
            ``max_in_flight``, ``prompt_tokens`` and ``completion_tokens``
            (of complete 200s), ``admitted_times`` (the sorted arrival times
            of the complete 200s, in seconds since the server started, for
            checking rolling windows), ``faults`` (injected fault kind ->
            count, every configured kind present), ``storms`` (429 storms
            started) and ``by_format`` (``"openai"`` and ``"anthropic"``,
            each with ``requests``, ``ok`` and ``rate_limited``).

            A ``reset`` fault's request is in ``requests`` and ``faults``
            only; a ``truncated`` one is not in ``ok`` nor in
            ``errors_by_status``; a ``hang`` ends in ``disconnected``.
        """
        return self._call(self._state.stats.snapshot)

    def reset_stats(self) -> None:
        """Zero the counters (requests still in flight stay in ``in_flight``)."""
        self._call(self._state.stats.reset)

    def set_limits(
        self,
        *,
        requests_per_minute: float | None | EllipsisType = ...,
        tokens_per_minute: float | None | EllipsisType = ...,
        input_tokens_per_minute: float | None | EllipsisType = ...,
        output_tokens_per_minute: float | None | EllipsisType = ...,
    ) -> None:
        """Change the limits while the server runs.

        Parameters
        ----------
        requests_per_minute, tokens_per_minute : float or None, optional
            The new limit; ``None`` makes it unlimited, leaving it out keeps
            the current one. A bucket that stays limited keeps its fill
            level as a fraction of its capacity; a newly limited one starts
            full.
        input_tokens_per_minute, output_tokens_per_minute : float or None, optional
            The Anthropic endpoint's token limits, changed the same way.
        """
        current = self._state.config
        requests = _keep(requests_per_minute, current.requests_per_minute)
        tokens = _keep(tokens_per_minute, current.tokens_per_minute)
        inputs = _keep(input_tokens_per_minute, current.input_tokens_per_minute)
        outputs = _keep(output_tokens_per_minute, current.output_tokens_per_minute)
        # Validate here, in the caller's thread, so a bad value raises to it.
        dataclasses.replace(
            current,
            requests_per_minute=requests,
            tokens_per_minute=tokens,
            input_tokens_per_minute=inputs,
            output_tokens_per_minute=outputs,
        )
        self._call(lambda: self._state.set_limits(requests, tokens, inputs, outputs))

    def close(self) -> None:
        """Stop a server started by `serve` and join its thread.

        Servers from `serve_async` stop when their ``async with`` block ends;
        calling this on one does nothing.
        """
        if self._closed or self._on_close is None:
            return
        self._closed = True
        self._on_close()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<SimServer {self.base_url} {state}>"

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` on the server's loop and return its result."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._closed or running is self._loop:
            return fn()

        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed back to the caller's thread
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=_THREAD_TIMEOUT_S)


def _keep(value: float | None | EllipsisType, current: float | None) -> float | None:
    """`value`, or `current` when the caller left it out (``...``)."""
    return current if value is ... else value


def _config(config: SimConfig | None, overrides: dict[str, Any]) -> SimConfig:
    names = {field.name for field in dataclasses.fields(SimConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown SimConfig field(s): {', '.join(unknown)}")
    return dataclasses.replace(config or SimConfig(), **overrides)


async def _start(
    app: web.Application, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Start `app` on host:port; return the runner and the bound port."""
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        access_log=None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1])
    logger.info("deluge_nb sim listening on http://%s:%d", host, bound)
    return runner, bound


class _ServerThread:
    """A daemon thread running one app on its own event loop."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._thread = threading.Thread(
            target=self._run, name="deluge-sim", daemon=True
        )

    def start(self) -> asyncio.AbstractEventLoop:
        """Start the thread; return its loop once the server listens."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        if self.loop is None:  # pragma: no cover - _main sets it before ready
            raise RuntimeError("deluge_nb sim thread started without a loop")
        return self.loop

    def stop(self) -> None:
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(_THREAD_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning(
                "deluge_nb sim thread did not stop within %s s", _THREAD_TIMEOUT_S
            )
        else:
            logger.info("deluge_nb sim on port %d stopped", self.port)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if self._ready.is_set():
                logger.exception("deluge_nb sim thread failed")
            else:
                self._error = exc
                self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner, self.port = await _start(self._app, self._host, self._port)
        try:
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


def serve(
    config: SimConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock | None = None,
    wall_clock: Clock | None = None,
    **config_overrides: Any,
) -> SimServer:
    """Start a simulator in a background thread.

    Use it as a context manager (``with serve(requests_per_minute=60) as
    sim:``) or keep the handle and call ``sim.close()`` when done, which
    suits a notebook. Either way the server stops and its thread is joined.

    Parameters
    ----------
    config : SimConfig, optional
        Base settings; defaults to ``SimConfig()``.
    host : str
        Address to listen on.
    port : int
        Port to listen on; 0 picks a free one (see ``sim.port``).
    clock : callable, optional
        Time source of the rate-limit buckets and storms (see `make_app`);
        a test seam.
    wall_clock : callable, optional
        Unix time of the Anthropic reset stamps (see `make_app`); a test
        seam.
    **config_overrides
        `SimConfig` fields that replace those of `config`.

    Returns
    -------
    SimServer
        The running server's handle.
    """
    app = make_app(
        _config(config, config_overrides), clock=clock, wall_clock=wall_clock
    )
    thread = _ServerThread(app, host, port)
    loop = thread.start()
    return SimServer(app[STATE_KEY], loop, host, thread.port, thread.stop)


@contextlib.asynccontextmanager
async def serve_async(
    config: SimConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock | None = None,
    wall_clock: Clock | None = None,
    **config_overrides: Any,
) -> AsyncIterator[SimServer]:
    """Run a simulator on the running event loop for the ``async with`` block.

    Takes the same arguments as `serve`.

    Yields
    ------
    SimServer
        The running server's handle.
    """
    app = make_app(
        _config(config, config_overrides), clock=clock, wall_clock=wall_clock
    )
    runner, bound = await _start(app, host, port)
    server = SimServer(app[STATE_KEY], asyncio.get_running_loop(), host, bound)
    try:
        yield server
    finally:
        server._closed = True
        await runner.cleanup()
