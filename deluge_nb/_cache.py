"""The persistent response cache: SQLite, keyed by the whole request.

A user who re-runs a cell, restarts the kernel or stops a job halfway must
never pay again for rows that already came back. Each successful row is
stored under :func:`request_key`, a SHA-256 digest of everything that
shapes the response (provider, base URL, wire model name, messages,
sampling parameters, schema) and of nothing else: the API key is never an
input, so rotating a key keeps the cache and the file holds no secret.

One file serves many kernels and processes at once: SQLite runs in WAL
mode (readers never wait for the writer) with a busy timeout, and every
write is an ``IMMEDIATE`` transaction, so a second writer waits its turn
instead of failing with "database is locked".

Each :class:`ResponseCache` owns one connection and one worker thread, and
every SQLite call runs on that thread. The async methods hand work to it
and await the result, so the event loop never blocks on disk or on another
process's lock; the sync methods hand work to it and wait.

Durability
----------
:meth:`ResponseCache.put` and :meth:`ResponseCache.put_many` commit before
they return. :meth:`ResponseCache.aput` queues the row and commits queued
rows in batches, when ``batch_rows`` are queued or ``batch_window_s``
after the first, whichever comes first; ``await cache.aflush()`` commits
everything queued so far, and :meth:`ResponseCache.close` does too. Queued
rows are visible to reads from the same object before they are committed.
A hard crash of the process (``kill -9``, a segfault) loses the rows not
yet committed: those of the last batch window (longer only while another
process holds the write lock or a commit failed and waits to be retried);
committed rows survive it. With
``synchronous=NORMAL`` a power failure or OS crash may also roll back the
last few commits; the file itself stays consistent.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._errors import ConfigurationError
from ._types import Completion

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
"""The table layout this module writes, stored in ``PRAGMA user_version``."""

KEY_VERSION = 1
"""Part of every key: bump it when the key's inputs change meaning."""

MAX_PARAMS_PER_QUERY = 500
"""Keys per ``IN (...)`` lookup; SQLite builds before 3.32 allow only 999."""

CACHE_FILE_NAME = "responses.sqlite3"

# Names that carry credentials. They never change a response, so they are
# left out of the key even if a caller passes them by mistake.
_SECRET_NAMES = frozenset(
    {
        "api_key",
        "api-key",
        "apikey",
        "key",
        "authorization",
        "x-api-key",
        "x-goog-api-key",
        "access_token",
        "token",
    }
)

_COLUMNS = (
    "key, response, input_tokens, output_tokens, cost_usd, model, "
    "finish_reason, created"
)
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    response TEXT,
    input_tokens INT,
    output_tokens INT,
    cost_usd REAL,
    model TEXT,
    finish_reason TEXT,
    created REAL
)
"""
_INSERT = f"INSERT OR REPLACE INTO responses ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)"

# (key, response, input_tokens, output_tokens, cost_usd, model,
#  finish_reason, created): one row of the table, as stored.
_Row = tuple[
    str, str, int | None, int | None, float | None, str | None, str | None, float
]


# -- keys -----------------------------------------------------------------


def request_key(
    *,
    provider: str,
    base_url: str,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    schema: Any = None,
) -> str:
    """The cache key of one request: a SHA-256 hex digest.

    The digest covers a canonical JSON encoding (sorted keys, no
    whitespace, UTF-8) of the whole request, so any change that could
    change the response gives a different key, and nothing else does.

    Parameters
    ----------
    provider
        The wire protocol, e.g. ``"openai"``.
    base_url
        The server's base URL. Credentials in it (``user:pass@``, a
        ``?key=`` query parameter) and a trailing slash are ignored.
    model
        The model name as sent on the wire.
    messages
        The chat messages, in order.
    params
        Sampling parameters (``temperature``, ``max_tokens``, ...). A
        parameter set to None counts as absent, and a float with an
        integral value equals the int (``temperature=0`` and ``0.0`` share
        a key). Credential-like names (``api_key``, ...) are ignored.
    schema
        None, a pydantic model class (its ``model_json_schema()`` is used)
        or a JSON schema as a mapping.

    Returns
    -------
    str
        64 lowercase hex digits.

    Raises
    ------
    TypeError
        If a value cannot be encoded as JSON, or ``schema`` is of an
        unsupported kind.
    """
    payload = {
        "v": KEY_VERSION,
        "provider": provider,
        "base_url": _clean_base_url(base_url),
        "model": model,
        "messages": [_canonical(message) for message in messages],
        "params": {
            str(name): _canonical(value)
            for name, value in params.items()
            if value is not None and str(name).lower() not in _SECRET_NAMES
        },
        "schema": _schema_document(schema),
    }
    text = json.dumps(
        payload,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_unencodable,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> Any:
    """``value`` with mappings as dicts, sequences as lists, 1.0 as 1."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value  # left to json.dumps, which calls _unencodable


def _unencodable(value: Any) -> Any:
    raise TypeError(
        f"a {type(value).__name__} cannot be part of a cache key; pass JSON "
        "values (str, int, float, bool, None, lists and dicts of them)"
    )


def _schema_document(schema: Any) -> Any:
    if schema is None:
        return None
    to_schema = getattr(schema, "model_json_schema", None)
    if callable(to_schema):
        return _canonical(to_schema())
    if isinstance(schema, Mapping):
        return _canonical(schema)
    raise TypeError(
        "schema must be None, a pydantic model class or a JSON schema dict, "
        f"not {type(schema).__name__}"
    )


@functools.lru_cache(maxsize=64)
def _clean_base_url(url: str) -> str:
    # Cached: a job asks once per request, always with the same few URLs.
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    query = urlencode(
        [
            (name, value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
            if name.lower() not in _SECRET_NAMES
        ]
    )
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), host, path, query, ""))


# -- where the file lives -------------------------------------------------


def default_cache_path() -> Path:
    """Where the shared cache file lives unless told otherwise.

    In order: ``$DELUGE_NB_CACHE_DIR/responses.sqlite3``, then
    ``$XDG_CACHE_HOME/deluge_nb/responses.sqlite3``, then the platform's
    user cache directory: ``~/Library/Caches/deluge_nb`` on macOS,
    ``%LOCALAPPDATA%\\deluge_nb\\Cache`` on Windows and
    ``~/.cache/deluge_nb`` elsewhere.

    Returns
    -------
    pathlib.Path
        The file's path; nothing is created.
    """
    override = os.environ.get("DELUGE_NB_CACHE_DIR")
    if override:
        return Path(override).expanduser() / CACHE_FILE_NAME

    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "deluge_nb" / CACHE_FILE_NAME

    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "deluge_nb" / CACHE_FILE_NAME
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "deluge_nb" / "Cache" / CACHE_FILE_NAME
    return Path.home() / ".cache" / "deluge_nb" / CACHE_FILE_NAME


# -- the cache ------------------------------------------------------------


class ResponseCache:
    """Successful responses stored on disk, keyed by :func:`request_key`.

    Parameters
    ----------
    path
        The SQLite file; its parent directories are created.
    busy_timeout_s
        How long a write waits for another process's write to finish
        before it fails.
    batch_rows, batch_window_s
        Rows queued by :meth:`aput` are committed when ``batch_rows`` are
        queued or ``batch_window_s`` seconds after the first of them,
        whichever comes first.

    Attributes
    ----------
    path : pathlib.Path
        The SQLite file.

    Notes
    -----
    Close the cache (or use it as a context manager) to commit queued rows
    and release the file. Instances from :func:`resolve_cache` are shared
    and closed at interpreter exit. The sync methods wait for the worker
    thread, so a coroutine should use the ``a``-prefixed ones instead.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 10.0,
        batch_rows: int = 100,
        batch_window_s: float = 0.05,
    ) -> None:
        if batch_rows < 1:
            raise ConfigurationError(f"batch_rows must be at least 1, not {batch_rows}")
        if not batch_window_s >= 0:
            raise ConfigurationError(
                f"batch_window_s must be zero or more, not {batch_window_s}"
            )

        self.path = Path(path).expanduser()
        self._busy_timeout_s = busy_timeout_s
        self._batch_rows = batch_rows
        self._batch_window_s = batch_window_s
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._worker: threading.Thread | None = None

        # _state_lock guards the queue, the timer and the closed flag;
        # _db_lock guards the connection (held by every job that uses it).
        self._state_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._pending: list[_Row] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._closed = True
            raise self._unusable(exc) from exc
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="deluge-cache"
        )
        try:
            self._submit(self._open).result()
        except BaseException as exc:
            self._closed = True
            self._executor.shutdown(wait=True)
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise self._unusable(exc) from exc
            raise

    # -- sync API

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """The cached completions among ``keys``.

        Parameters
        ----------
        keys
            Request keys; duplicates and any number of them are fine.

        Returns
        -------
        dict[str, Completion]
            Only the keys found. Each completion has ``cached=True``,
            ``attempts=0``, ``latency_s=0.0`` and the ``cost_usd`` it had
            when it was bought.
        """
        return self._call(self._read_many, list(keys))

    def put(self, key: str, completion: Completion) -> None:
        """Store one row and commit; failed rows are skipped.

        Parameters
        ----------
        key
            The row's :func:`request_key`.
        completion
            The result; stored only when ``completion.ok``.
        """
        self.put_many([(key, completion)])

    def put_many(self, items: Sequence[tuple[str, Completion]]) -> None:
        """Store many rows in one transaction; failed rows are skipped.

        Parameters
        ----------
        items
            ``(key, completion)`` pairs. A later pair wins over an earlier
            one with the same key.
        """
        self._enqueue(items)
        self._call(self._write_pending)

    def clear(self) -> None:
        """Delete every stored row (other processes' rows too)."""
        self._call(self._delete_all)

    def close(self) -> None:
        """Commit queued rows, close the connection and stop the worker.

        Safe to call more than once.
        """
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None and self._timer_loop is not None:
            _cancel_timer(timer, self._timer_loop)

        try:
            try:
                future = self._submit(self._finish)
            except RuntimeError:
                # Only interpreter exit stops the executor before close()
                # does: worker threads are joined before atexit handlers
                # run. The final commit happens on this thread instead.
                with self._db_lock:
                    self._finish()
            else:
                future.result()
        finally:
            self._executor.shutdown(wait=True)

    # -- async API

    async def aget_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """Await :meth:`get_many` without blocking the event loop."""
        self._check_open()
        return await asyncio.wrap_future(self._submit(self._read_many, list(keys)))

    async def aput(self, key: str, completion: Completion) -> None:
        """Queue one row for the next batch commit; failed rows are skipped.

        Returns at once unless a full batch is queued, in which case it
        waits for that batch to commit. The row is durable after
        ``await cache.aflush()`` or :meth:`close`.

        Parameters
        ----------
        key
            The row's :func:`request_key`.
        completion
            The result; stored only when ``completion.ok``.
        """
        queued = self._enqueue([(key, completion)])
        if queued >= self._batch_rows:
            await self.aflush()
        elif queued:
            self._schedule_flush(asyncio.get_running_loop())

    async def aflush(self) -> None:
        """Commit every row queued so far.

        The commit goes ahead even if the awaiting task is cancelled.
        """
        self._check_open()
        await _shielded(self._submit(self._write_pending))

    async def aclose(self) -> None:
        """:meth:`close`, awaited on a helper thread."""
        await asyncio.to_thread(self.close)

    # -- protocol

    def __len__(self) -> int:
        return self._call(self._count, True)

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        name = type(self).__name__
        if self._closed:
            return f"{name}({str(self.path)!r}, closed)"
        try:
            rows = self._call(self._count, False)
        except (sqlite3.Error, ValueError, RuntimeError):
            return f"{name}({str(self.path)!r})"
        unsaved = len(self._pending)
        extra = f", unsaved={unsaved}" if unsaved else ""
        return f"{name}({str(self.path)!r}, rows={rows}{extra})"

    # -- plumbing (called on the loop or caller thread)

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        return self._executor.submit(self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._db_lock:
            return fn(*args)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"the cache at {self.path} is closed")

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the worker thread and wait for it."""
        self._check_open()
        if threading.current_thread() is self._worker:
            return fn(*args)  # already on the worker: waiting would deadlock
        return self._submit(fn, *args).result()

    def _enqueue(self, items: Iterable[tuple[str, Completion]]) -> int:
        """Queue the successful rows; the number queued afterwards."""
        now = time.time()
        rows: list[_Row] = []
        for key, completion in items:
            if not completion.ok:
                logger.debug("cache: not storing failed row %.12s", key)
                continue
            row = _row(key, completion, now)
            if row is None:
                # Queued, a row SQLite cannot bind would fail every later
                # commit of this cache, other jobs' rows with it.
                logger.warning("cache: not storing row %.12s: unexpected types", key)
                continue
            rows.append(row)
        with self._state_lock:
            self._check_open()
            self._pending.extend(rows)
            return len(self._pending) if rows else 0

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._state_lock:
            if self._closed:
                return
            # A timer on a loop that has stopped or closed (an asyncio.run
            # that returned) will not fire, so this loop gets its own.
            current = self._timer_loop
            if self._timer is not None and current is not None:
                if current is loop or current.is_running():
                    return
            self._timer_loop = loop
            self._timer = loop.call_later(self._batch_window_s, self._on_timer)

    def _on_timer(self) -> None:
        with self._state_lock:
            self._timer = None
            if self._closed:
                return
        try:
            future = self._submit(self._write_pending)
        except RuntimeError:  # interpreter exit: close() commits instead
            logger.debug("cache: timed commit skipped, worker is gone")
            return
        future.add_done_callback(self._report_timed_commit)

    def _report_timed_commit(self, future: concurrent.futures.Future[int]) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            # The rows stay queued; the next commit or close() retries them.
            logger.warning("cache: commit to %s failed: %s", self.path, exc)

    def _unusable(self, exc: BaseException) -> ConfigurationError:
        return ConfigurationError(
            f"cannot use {self.path} as the response cache ({exc}); give "
            "cache= another file path, or cache=False to run without a cache"
        )

    # -- jobs (run on the worker thread, under _db_lock)

    def _open(self) -> None:
        self._worker = threading.current_thread()
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_s,
            isolation_level=None,  # transactions are explicit below
            check_same_thread=False,  # only for close() at interpreter exit
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            mode = self._enable_wal(conn)
            if str(mode).lower() != "wal":
                logger.warning(
                    "cache: %s cannot use WAL mode (got %s); concurrent "
                    "writers will wait longer",
                    self.path,
                    mode,
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        logger.debug("cache: opened %s", self.path)

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        # SQLite answers "database is locked" at once, without waiting on
        # busy_timeout, when two connections switch a new file to WAL
        # together (two kernels opening a fresh cache), so wait here.
        deadline = time.monotonic() + self._busy_timeout_s
        pause = 0.005
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = _user_version(conn)
        if version == SCHEMA_VERSION:
            return
        with _write_transaction(conn):
            version = _user_version(conn)  # another process may have done it
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the cache file {self.path} was written by a newer "
                    f"deluge_nb (schema {version}, this one knows up to "
                    f"{SCHEMA_VERSION}); upgrade, or pass another cache path"
                )
            if version < SCHEMA_VERSION:
                conn.execute(_CREATE_TABLE)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                logger.debug(
                    "cache: created schema %d in %s", SCHEMA_VERSION, self.path
                )

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"the cache at {self.path} is closed")
        return self._conn

    def _write_pending(self) -> int:
        with self._state_lock:
            rows, self._pending = self._pending, []
        if not rows:
            return 0

        conn = self._connection()
        try:
            with _write_transaction(conn):
                conn.executemany(_INSERT, rows)
        except BaseException:
            with self._state_lock:
                self._pending[:0] = rows  # keep them for the next attempt
            raise
        logger.debug("cache: committed %d rows to %s", len(rows), self.path)
        return len(rows)

    def _read_many(self, keys: list[str]) -> dict[str, Completion]:
        wanted = list(dict.fromkeys(keys))
        conn = self._connection()
        found: dict[str, Completion] = {}
        select = f"SELECT {_COLUMNS} FROM responses WHERE key IN "

        # One read transaction: one snapshot, and the shared lock is taken
        # once instead of once per chunk.
        conn.execute("BEGIN")
        try:
            for start in range(0, len(wanted), MAX_PARAMS_PER_QUERY):
                chunk = wanted[start : start + MAX_PARAMS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(f"{select}({marks})", chunk):
                    found[row[0]] = _completion(row)
        finally:
            conn.execute("COMMIT")

        # Rows queued by aput and not yet committed are read from memory.
        with self._state_lock:
            queued = {row[0]: row for row in self._pending}
        if queued:
            for key in wanted:
                row = queued.get(key)
                if row is not None:
                    found[key] = _completion(row)

        logger.debug(
            "cache: %d of %d keys found in %s", len(found), len(wanted), self.path
        )
        return found

    def _count(self, flush: bool) -> int:
        if flush:
            self._write_pending()
        return int(
            self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        )

    def _delete_all(self) -> None:
        with self._state_lock:
            dropped = len(self._pending)
            self._pending.clear()
        conn = self._connection()
        with _write_transaction(conn):
            deleted = conn.execute("DELETE FROM responses").rowcount
        logger.debug(
            "cache: cleared %s (%d rows, %d queued)", self.path, deleted, dropped
        )

    def _finish(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            self._write_pending()
        finally:
            self._conn = None
            conn.close()
            logger.debug("cache: closed %s", self.path)


@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error.

    ``IMMEDIATE`` takes the write lock up front, where the busy timeout
    applies; a deferred transaction that upgrades to writing later can fail
    at once with "database is locked" when another connection wrote
    meanwhile.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _row(key: str, completion: Completion, now: float) -> _Row | None:
    """The table row for a completion, or None if a field has a wrong type."""
    response = completion.response
    counts = (completion.input_tokens, completion.output_tokens)
    texts = (completion.model, completion.finish_reason)
    cost = completion.cost_usd
    fields_ok = (
        isinstance(key, str)
        and all(
            c is None or (isinstance(c, int) and not isinstance(c, bool))
            for c in counts
        )
        and all(t is None or isinstance(t, str) for t in texts)
        and (cost is None or isinstance(cost, float | int))
    )
    if not isinstance(response, str) or not fields_ok:
        return None
    return (key, response, *counts, cost, *texts, now)


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _completion(row: tuple[Any, ...]) -> Completion:
    _key, response, input_tokens, output_tokens, cost, model, finish, _ = row
    return Completion(
        response=response,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        model=model,
        finish_reason=finish,
        latency_s=0.0,
        attempts=0,
        cached=True,
        error=None,
    )


async def _shielded(future: concurrent.futures.Future[T]) -> T:
    """Await ``future`` so that cancelling the awaiter does not cancel it."""
    wrapped = asyncio.wrap_future(future)
    # Fetch the exception of a write nobody awaits any more, so asyncio
    # does not log it as never retrieved; the writer logs failures itself.
    wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
    return await asyncio.shield(wrapped)


def _cancel_timer(timer: asyncio.TimerHandle, loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_closed():
        return
    try:
        loop.call_soon_threadsafe(timer.cancel)
    except RuntimeError:  # the loop closed meanwhile
        pass


# -- shared instances -----------------------------------------------------

_shared: dict[Path, ResponseCache] = {}
_shared_lock = threading.Lock()
_atexit_registered = False


def resolve_cache(
    cache: bool | str | os.PathLike[str] | ResponseCache | None,
) -> ResponseCache | None:
    """The cache a ``cache=`` option asks for.

    Parameters
    ----------
    cache
        True: the process-wide cache at :func:`default_cache_path`.
        False or None: no cache. A path: the process-wide cache for that
        file, or for ``responses.sqlite3`` in it when it is a folder. A
        :class:`ResponseCache`: itself.

    Returns
    -------
    ResponseCache or None
        Shared instances are reused by every call that names the same
        file, and closed at interpreter exit.

    Raises
    ------
    TypeError
        For any other kind of value.
    """
    if cache is None or cache is False:
        return None
    if isinstance(cache, ResponseCache):
        return cache
    if cache is True:
        path = default_cache_path()
    elif isinstance(cache, (str, os.PathLike)):
        path = Path(cache).expanduser()
        if path.is_dir():
            path = path / CACHE_FILE_NAME
    else:
        raise TypeError(
            "cache must be True, False, None, a path or a ResponseCache, "
            f"not {type(cache).__name__}"
        )
    return _shared_cache(path)


def _shared_cache(path: Path) -> ResponseCache:
    global _atexit_registered
    resolved = path.expanduser().resolve()
    with _shared_lock:
        instance = _shared.get(resolved)
        if instance is None or instance._closed:
            instance = ResponseCache(resolved)
            _shared[resolved] = instance
            logger.debug("cache: shared instance for %s", resolved)
        if not _atexit_registered:
            atexit.register(_close_shared)
            _atexit_registered = True
        return instance


def _close_shared() -> None:
    """Close every shared instance (interpreter exit, tests)."""
    with _shared_lock:
        instances = list(_shared.values())
        _shared.clear()
    for instance in instances:
        try:
            instance.close()
        except Exception:  # exiting: log and close the rest
            logger.warning("cache: closing %s failed", instance.path, exc_info=True)
