"""One event loop in a daemon thread, shared by every call in the process.

Jupyter runs its own event loop, so a blocking call from a cell cannot use
``asyncio.run``; patching asyncio to allow nesting (``nest_asyncio``) drops
queued cells and widget messages on recent ipykernels. Instead, every job
runs on this package's own loop (``submit``); a ``Job`` (``_job.py``)
waits for it from the caller's thread or awaits it from the caller's loop.
The limiter state, the HTTP session and the progress views all live on
this loop, so they persist between cells and keep updating while a cell
blocks.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp

logger = logging.getLogger(__name__)

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_session: aiohttp.ClientSession | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The engine's loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is not None and _thread is not None and _thread.is_alive():
            return _loop

        # A plain new loop: whatever policy the user installed (uvloop,
        # nest_asyncio) is theirs, and this loop does not depend on it.
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name="deluge-engine", daemon=True)
        thread.start()
        ready.wait()
        _loop, _thread = loop, thread
        atexit.register(shutdown)
        return loop


def in_engine_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the engine loop from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


async def get_session() -> aiohttp.ClientSession:
    """The engine loop's HTTP session; call only from the engine loop.

    The concurrency cap is the limiter's job, so the connector's own limit
    is lifted.
    """
    global _session
    if _session is None or _session.closed:
        # trust_env=False: with it, aiohttp reads ~/.netrc and the proxy
        # variables on every request, through the thread pool, which cost
        # two thirds of the engine's per-request time in the overhead
        # benchmark. The proxy is looked up once per host instead.
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            trust_env=False,
        )
    return _session


@functools.lru_cache(maxsize=256)
def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``'s host, or None.

    Honours ``HTTP(S)_PROXY`` and ``NO_PROXY`` as aiohttp's ``trust_env``
    would; read once per host, not once per request.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def shutdown(timeout: float = 5.0) -> None:
    """Close the session and stop the engine loop (tests and interpreter exit)."""
    global _loop, _thread
    atexit.unregister(shutdown)
    with _lock:
        loop, thread = _loop, _thread
        _loop = _thread = None
    if loop is None or thread is None:
        return

    async def close() -> None:
        global _session
        if _session is not None:
            await _session.close()
            _session = None
        await asyncio.sleep(0)

    if thread.is_alive():
        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout)
        except Exception:  # shutting down: nothing left to report to
            logger.debug("engine session close failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
    if not loop.is_running():
        loop.close()
