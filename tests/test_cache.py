"""The response cache: keys, storage, two processes, and a free event loop."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deluge_nb._cache import (
    SCHEMA_VERSION,
    ResponseCache,
    _close_shared,
    default_cache_path,
    request_key,
    resolve_cache,
)
from deluge_nb._errors import ConfigurationError
from deluge_nb._types import Completion

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Assembled at run time so that this file does not itself look like a key.
CANARY_KEY = "sk-" + "proj-canary-7f3a9c1e5b2d4068"


def done(text: str = "Positive.", **fields: Any) -> Completion:
    """A successful row as the client would produce it."""
    values: dict[str, Any] = {
        "response": text,
        "input_tokens": 12,
        "output_tokens": 3,
        "cost_usd": 0.0000036,
        "model": "gpt-4o-mini-2024-07-18",
        "finish_reason": "stop",
        "latency_s": 0.84,
        "attempts": 2,
    }
    values.update(fields)
    return Completion(**values)


def key_for(text: str, **changes: Any) -> str:
    request: dict[str, Any] = {
        "provider": "openai",
        "base_url": "https://api.openai.com/v1",
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": text},
        ],
        "params": {"temperature": 0.2, "max_tokens": 16},
        "schema": None,
    }
    request.update(changes)
    return request_key(**request)


def raw_count(path: Path) -> int:
    """Rows committed to the file, seen through a connection of our own."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ResponseCache]:
    with ResponseCache(tmp_path / "cache" / "responses.sqlite3") as instance:
        yield instance


@pytest.fixture(autouse=True)
def _no_shared_caches_left() -> Iterator[None]:
    yield
    _close_shared()


class Review:
    """Stands in for a pydantic model class (pydantic is not a dependency)."""

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]:
        return {
            "title": "Review",
            "type": "object",
            "properties": {"sentiment": {"type": "string"}},
            "required": ["sentiment"],
        }


# -- keys -----------------------------------------------------------------


def test_the_same_request_gives_the_same_key() -> None:
    first = key_for("Sentiment of: great phone")
    second = key_for("Sentiment of: great phone")

    assert first == second
    assert len(first) == 64
    assert int(first, 16) >= 0


def test_key_ignores_mapping_order_and_none_params() -> None:
    reference = key_for("hi", params={"temperature": 0.2, "max_tokens": 16})

    reordered = key_for("hi", params={"max_tokens": 16, "temperature": 0.2})
    with_none = key_for(
        "hi", params={"temperature": 0.2, "max_tokens": 16, "top_p": None}
    )
    messages = [
        {"content": "Answer in one word.", "role": "system"},
        {"content": "hi", "role": "user"},
    ]

    assert reordered == reference
    assert with_none == reference
    assert key_for("hi", messages=messages) == reference


def test_temperature_none_is_the_same_as_absent() -> None:
    assert key_for("hi", params={"temperature": None}) == key_for("hi", params={})


def test_an_integral_float_is_the_same_as_the_int() -> None:
    assert key_for("hi", params={"temperature": 0}) == key_for(
        "hi", params={"temperature": 0.0}
    )


@pytest.mark.parametrize(
    "change",
    [
        {"provider": "openai_compatible"},
        {"base_url": "http://localhost:8000/v1"},
        {"model": "gpt-4o"},
        {"params": {"temperature": 0.3, "max_tokens": 16}},
        {"params": {"temperature": 0.2, "max_tokens": 17}},
        {"params": {"temperature": 0.2, "max_tokens": 16, "seed": 1}},
        {"schema": Review},
        {"schema": {"type": "object"}},
        {"messages": [{"role": "user", "content": "Sentiment of: great phone"}]},
        {
            "messages": [
                {"role": "system", "content": "Answer in two words."},
                {"role": "user", "content": "Sentiment of: great phone"},
            ]
        },
    ],
    ids=lambda change: "-".join(change),
)
def test_any_change_to_the_request_changes_the_key(change: dict[str, Any]) -> None:
    assert key_for("Sentiment of: great phone", **change) != key_for(
        "Sentiment of: great phone"
    )


def test_message_text_changes_the_key() -> None:
    assert key_for("Sentiment of: great phone") != key_for("Sentiment of: great phone.")
    assert key_for("café") != key_for("cafe")


def test_a_model_class_schema_keys_like_its_json_schema() -> None:
    assert key_for("hi", schema=Review) == key_for(
        "hi", schema=Review.model_json_schema()
    )


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(TypeError, match="schema must be"):
        key_for("hi", schema="Review")
    with pytest.raises(TypeError, match="cannot be part of a cache key"):
        key_for("hi", params={"stop": {"a", "b"}})


def test_credentials_never_shape_the_key() -> None:
    assert not any("key" in name for name in inspect.signature(request_key).parameters)

    reference = key_for("hi")
    smuggled_param = key_for(
        "hi", params={"temperature": 0.2, "max_tokens": 16, "api_key": CANARY_KEY}
    )
    smuggled_url = key_for(
        "hi", base_url=f"https://user:{CANARY_KEY}@api.openai.com/v1/?key={CANARY_KEY}"
    )

    assert smuggled_param == reference
    assert smuggled_url == reference


def test_the_api_key_never_reaches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"

    def send(prompt: str, *, api_key: str, cache: ResponseCache) -> None:
        # How a client holds a key: it authenticates the request and is
        # nowhere in what the cache sees.
        headers = {"Authorization": f"Bearer {api_key}"}
        assert headers
        cache.put(key_for(prompt), done(f"answer to {prompt}"))

    with ResponseCache(path) as cache:
        send("Sentiment of: fine", api_key=CANARY_KEY, cache=cache)
        assert len(cache) == 1
        # Read the files while the WAL still holds the row, then after the
        # checkpoint at close.
        live = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    closed = b"".join(p.read_bytes() for p in tmp_path.iterdir())

    for blob in (live, closed):
        assert b"answer to Sentiment of: fine" in blob  # the row is there
        assert CANARY_KEY.encode() not in blob
        assert b"sk-" not in blob


# -- storage --------------------------------------------------------------


def test_round_trip_keeps_every_field(cache: ResponseCache) -> None:
    key = key_for("Sentiment of: great phone")
    cache.put(key, done("Pösitive — 😀", cost_usd=0.00012345))

    got = cache.get_many([key])

    assert got == {
        key: Completion(
            response="Pösitive — 😀",
            input_tokens=12,
            output_tokens=3,
            cost_usd=0.00012345,
            model="gpt-4o-mini-2024-07-18",
            finish_reason="stop",
            latency_s=0.0,
            attempts=0,
            cached=True,
            error=None,
        )
    }


def test_missing_keys_are_absent_from_the_result(cache: ResponseCache) -> None:
    cache.put("a" * 64, done())

    assert set(cache.get_many(["a" * 64, "b" * 64, "a" * 64])) == {"a" * 64}
    assert cache.get_many([]) == {}


def test_failed_rows_are_not_stored(cache: ResponseCache) -> None:
    cache.put("failed", Completion(error="RateLimitError: 429", attempts=5))
    cache.put("empty", Completion(response=None))
    cache.put_many([("ok", done()), ("also failed", done(error="ServerError: 503"))])

    assert set(cache.get_many(["failed", "empty", "ok", "also failed"])) == {"ok"}
    assert len(cache) == 1


def test_put_replaces_and_put_many_keeps_the_last(cache: ResponseCache) -> None:
    cache.put("k", done("first"))
    cache.put("k", done("second"))
    cache.put_many([("j", done("one")), ("j", done("two"))])

    got = cache.get_many(["k", "j"])

    assert got["k"].response == "second"
    assert got["j"].response == "two"
    assert len(cache) == 2


@pytest.mark.skipif(
    not hasattr(sqlite3.Connection, "setlimit"), reason="needs Python 3.11"
)
def test_lookups_of_100_000_keys_are_chunked(cache: ResponseCache) -> None:
    stored = [f"{i:064x}" for i in range(1_234)]
    cache.put_many([(key, done(f"row {i}")) for i, key in enumerate(stored)])
    asked = [f"{i:064x}" for i in range(100_000)]
    # Some SQLite builds allow only 999 variables per statement; this one
    # is built with a far higher cap, so impose the low one.
    assert cache._conn is not None
    cache._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    got = cache.get_many(asked)

    assert len(got) == 1_234
    assert got[stored[1_233]].response == "row 1233"
    assert all(row.cached for row in got.values())


def test_the_file_is_wal_with_a_schema_version(cache: ResponseCache) -> None:
    conn = sqlite3.connect(cache.path)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(responses)")]
    finally:
        conn.close()

    assert mode == "wal"
    assert version == SCHEMA_VERSION
    assert columns == [
        "key",
        "response",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "model",
        "finish_reason",
        "created",
    ]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    with pytest.raises(ConfigurationError, match="newer deluge_nb"):
        ResponseCache(path)


def test_rows_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "responses.sqlite3"
    with ResponseCache(path) as cache:
        cache.put("k", done("kept"))

    with ResponseCache(path) as again:
        assert again.get_many(["k"])["k"].response == "kept"


def test_clear_removes_stored_and_queued_rows(cache: ResponseCache) -> None:
    cache.put_many([(str(i), done()) for i in range(10)])

    cache.clear()

    assert len(cache) == 0
    assert cache.get_many([str(i) for i in range(10)]) == {}


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "responses.sqlite3")
    cache.close()
    cache.close()

    assert "closed" in repr(cache)
    with pytest.raises(ValueError, match="closed"):
        cache.get_many(["k"])
    with pytest.raises(ValueError, match="closed"):
        cache.put("k", done())


def test_repr_shows_the_path_and_row_count(cache: ResponseCache) -> None:
    cache.put_many([("a", done()), ("b", done())])

    assert repr(cache) == f"ResponseCache({str(cache.path)!r}, rows=2)"


def test_cache_decisions_are_logged_at_debug(
    cache: ResponseCache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="deluge_nb._cache")

    cache.put("failed-row-key", Completion(error="boom"))
    cache.put("good", done("secret response text"))
    cache.get_many(["good", "missing"])

    messages = [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert any("not storing failed row" in m for m in messages)
    assert any("1 of 2 keys found" in m for m in messages)
    assert not any("secret response text" in m for m in messages)


# -- two processes at once -------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from deluge_nb._cache import ResponseCache
from deluge_nb._types import Completion

path, tag, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
ready.touch()
while not go.exists():
    time.sleep(0.001)
# Opened after the signal, so both processes also race to create the file.
with ResponseCache(path) as cache:
    for i in range(500):
        row = Completion(
            response=f"{tag} says {i}", input_tokens=i, output_tokens=1,
            cost_usd=i / 1e6, model="m", finish_reason="stop",
        )
        cache.put(f"{tag}-{i}", row)
"""

READER = """
import json, sys
from deluge_nb._cache import ResponseCache

with ResponseCache(sys.argv[1]) as cache:
    keys = [f"{tag}-{i}" for tag in ("left", "right") for i in range(500)]
    got = cache.get_many(keys)
    print(json.dumps({k: [c.response, c.input_tokens] for k, c in got.items()}))
"""


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_opening_waits_for_another_connection_switching_the_file(
    tmp_path: Path,
) -> None:
    # Two kernels opening a fresh cache at once: while one holds the write
    # lock, SQLite refuses the other's switch to WAL at once instead of
    # waiting on busy_timeout. Opening must wait, not fail.
    path = tmp_path / "responses.sqlite3"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, other.execute, args=("COMMIT",))
    release.start()
    try:
        started = time.monotonic()
        with ResponseCache(path, busy_timeout_s=10) as cache:
            waited = time.monotonic() - started
            assert len(cache) == 0
    finally:
        release.join()
        other.close()

    assert waited >= 0.25


def test_two_processes_write_one_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "responses.sqlite3"
    go = tmp_path / "go"
    ready = [tmp_path / "ready-left", tmp_path / "ready-right"]
    writers = [
        _python(WRITER, str(path), tag, str(flag), str(go))
        for tag, flag in zip(("left", "right"), ready, strict=True)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(flag.exists() for flag in ready):
            assert time.monotonic() < deadline, "writers did not start"
            assert all(w.poll() is None for w in writers), writers[0].stderr
            time.sleep(0.01)
        go.touch()
        results = [w.communicate(timeout=60) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.communicate()

    for writer, (_, err) in zip(writers, results, strict=True):
        assert "locked" not in err
        assert writer.returncode == 0, err

    reader = _python(READER, str(path))
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    rows = json.loads(out)
    assert len(rows) == 1_000
    assert rows["left-499"] == ["left says 499", 499]
    assert rows["right-0"] == ["right says 0", 0]


EXITER = """
import asyncio, sys
from deluge_nb._cache import resolve_cache
from deluge_nb._types import Completion

cache = resolve_cache(sys.argv[1])

async def main():
    for i in range(30):
        await cache.aput(str(i), Completion(response="kept"))

asyncio.run(main())  # exits with the rows queued: no flush, no close
"""


def test_shared_caches_commit_queued_rows_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"

    exiter = _python(EXITER, str(path))
    _, err = exiter.communicate(timeout=60)

    assert exiter.returncode == 0, err
    assert err == ""
    assert raw_count(path) == 30


# -- async ----------------------------------------------------------------


async def test_aput_leaves_the_event_loop_free(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = loop.time()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now

    cache = ResponseCache(path)
    # Another process holds the write lock for half a second: a cache that
    # wrote on the loop's thread would stall the loop (and this very
    # release) until its busy timeout.
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        loop.call_later(0.5, other.execute, "COMMIT")
        ticker = asyncio.create_task(tick())

        start = loop.time()
        for i in range(2_000):
            await cache.aput(f"row-{i}", done(f"answer {i}"))
        await cache.aflush()
        elapsed = loop.time() - start

        stop.set()
        await ticker
        stored = raw_count(path)
    finally:
        other.close()
        cache.close()

    assert elapsed >= 0.45  # the writes really waited for the other writer
    assert stored == 2_000
    assert len(gaps) > 50
    assert max(gaps) < 0.2


async def test_aflush_makes_queued_rows_durable(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    with ResponseCache(path, batch_window_s=60) as cache:
        for i in range(5):
            await cache.aput(str(i), done())
        await cache.aput("failed", Completion(error="boom"))

        assert raw_count(path) == 0  # queued, not committed yet
        assert len(await cache.aget_many([str(i) for i in range(5)])) == 5

        await cache.aflush()
        assert raw_count(path) == 5


async def test_queued_rows_commit_within_the_batch_window(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    with ResponseCache(path, batch_window_s=0.05) as cache:
        await cache.aput("k", done())

        deadline = time.monotonic() + 5
        while raw_count(path) == 0:
            assert time.monotonic() < deadline, "the timed commit never came"
            await asyncio.sleep(0.02)


def test_rows_queued_by_a_finished_loop_commit_from_the_next(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    with ResponseCache(path, batch_window_s=0.05) as cache:
        # The first loop ends before its timed commit can fire.
        asyncio.run(cache.aput("first", done()))
        assert raw_count(path) == 0

        async def later() -> None:
            await cache.aput("second", done())
            await asyncio.sleep(0.5)

        asyncio.run(later())
        assert raw_count(path) == 2


async def test_async_methods_refuse_a_closed_cache(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "responses.sqlite3")
    await cache.aclose()

    with pytest.raises(ValueError, match="closed"):
        await cache.aput("k", done())
    with pytest.raises(ValueError, match="closed"):
        await cache.aget_many(["k"])
    with pytest.raises(ValueError, match="closed"):
        await cache.aflush()


async def test_a_full_batch_commits_at_once(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    with ResponseCache(path, batch_rows=10, batch_window_s=60) as cache:
        for i in range(10):
            await cache.aput(str(i), done())

        assert raw_count(path) == 10


async def test_close_commits_queued_rows(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    cache = ResponseCache(path, batch_window_s=60)
    await cache.aput("k", done("kept"))

    await cache.aclose()

    assert raw_count(path) == 1


async def test_aget_many_matches_get_many(cache: ResponseCache) -> None:
    cache.put_many([(str(i), done(f"r{i}")) for i in range(700)])
    keys = [str(i) for i in range(0, 1_400, 2)]

    assert await cache.aget_many(keys) == cache.get_many(keys)


# -- where the cache lives -------------------------------------------------


def test_resolve_cache_semantics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELUGE_NB_CACHE_DIR", str(tmp_path / "default"))

    shared = resolve_cache(True)
    assert shared is not None
    assert shared.path == tmp_path / "default" / "responses.sqlite3"
    assert resolve_cache(True) is shared
    assert resolve_cache(shared.path) is shared
    assert resolve_cache(str(shared.path)) is shared
    # A folder, like DELUGE_NB_CACHE_DIR, means the cache file in it.
    assert resolve_cache(tmp_path / "default") is shared

    assert resolve_cache(False) is None
    assert resolve_cache(None) is None

    other = resolve_cache(tmp_path / "other.sqlite3")
    assert other is not None and other is not shared
    assert resolve_cache(str(tmp_path / "other.sqlite3")) is other

    with ResponseCache(tmp_path / "mine.sqlite3") as mine:
        assert resolve_cache(mine) is mine

    with pytest.raises(TypeError, match="cache must be"):
        resolve_cache(1)  # type: ignore[arg-type]


def test_a_closed_shared_cache_is_replaced(tmp_path: Path) -> None:
    first = resolve_cache(tmp_path / "c.sqlite3")
    assert first is not None
    first.close()

    second = resolve_cache(tmp_path / "c.sqlite3")

    assert second is not None and second is not first
    second.put("k", done())
    assert len(second) == 1


def test_default_path_honours_the_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELUGE_NB_CACHE_DIR", str(tmp_path / "here"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert default_cache_path() == tmp_path / "here" / "responses.sqlite3"


def test_default_path_falls_back_to_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DELUGE_NB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "platform", "linux")

    assert default_cache_path() == tmp_path / "xdg/deluge_nb/responses.sqlite3"

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_path() == tmp_path / "home/.cache/deluge_nb/responses.sqlite3"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert default_cache_path() == (
        tmp_path / "home/Library/Caches/deluge_nb/responses.sqlite3"
    )

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert default_cache_path() == (
        tmp_path / "local/deluge_nb/Cache/responses.sqlite3"
    )


@pytest.mark.parametrize(
    "make_bad_path",
    [
        pytest.param(lambda tmp: tmp, id="a-directory"),
        pytest.param(
            lambda tmp: _write(tmp / "notes.txt", "not a database " * 100),
            id="not-a-database",
        ),
        pytest.param(
            lambda tmp: _write(tmp / "file", "x") / "cache.sqlite3", id="under-a-file"
        ),
    ],
)
def test_an_unusable_cache_path_says_which_and_what_to_do(
    tmp_path: Path, make_bad_path: Any
) -> None:
    bad = make_bad_path(tmp_path)

    with pytest.raises(ConfigurationError) as raised:
        ResponseCache(bad)

    message = str(raised.value)
    assert str(bad) in message
    assert "cache=False" in message
    assert isinstance(raised.value.__cause__, (sqlite3.Error, OSError))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
