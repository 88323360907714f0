"""Servers that answer 200 with bodies no parser foresaw.

Each row of such a job must end with a response or an error that says
why; nothing may escape as "cancelled", and the cache must stay usable for
the rest of the process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from deluge_nb import LLMClient, register_model
from deluge_nb.providers import OpenAIChat
from deluge_nb.sim import serve
from deluge_nb.sim._serve import _ServerThread

USAGE = {"prompt_tokens": 5, "completion_tokens": 2}


def _reply(prompt: str) -> web.Response:
    """The body a prompt asks for; the prompt names the oddity."""
    parts: Any = [{"type": "text", "text": "hi "}, {"type": "text", "text": prompt}]
    if prompt.startswith("parts-no-usage"):
        body: Any = {"choices": [{"message": {"content": parts}}]}
    elif prompt.startswith("parts"):
        body = {"choices": [{"message": {"content": parts}}], "usage": USAGE}
    elif prompt.startswith("latin1"):
        raw = b'{"choices": [{"message": {"content": "caf\xe9"}}]}'
        return web.Response(body=raw, content_type="application/json")
    elif prompt.startswith("junk-usage"):
        usage = {"prompt_tokens": [5], "prompt_tokens_details": ["x"]}
        body = {"choices": [{"message": {"content": "ok"}}], "usage": usage}
    else:
        body = {"choices": [{"message": {"content": prompt}}], "usage": USAGE}
    return web.json_response(body)


async def _chat(request: web.Request) -> web.Response:
    payload = await request.json()
    return _reply(payload["messages"][-1]["content"])


@pytest.fixture(scope="module")
def odd() -> Iterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    thread = _ServerThread(app, "127.0.0.1", 0)
    thread.start()
    base_url = f"http://127.0.0.1:{thread.port}/v1"
    register_model("odd", base_url=base_url, tokenizer="o200k_base")
    try:
        yield base_url
    finally:
        thread.stop()


def test_content_parts_are_joined_and_cached(odd: str, tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    client = LLMClient("odd", progress=None, cache=cache, max_requests_per_minute=600)
    first = client.process_prompts_sync(["parts one", "parts-no-usage two"])
    assert first[0].response == "hi parts one"
    assert first[0].error is None and first[0].input_tokens == 5
    assert first[1].response == "hi parts-no-usage two"
    assert first[1].output_tokens is not None  # estimated from the text

    again = client.process_prompts_sync(["parts one", "plain"])
    assert again[0].cached and again[0].response == "hi parts one"
    assert again[1].response == "plain" and again[1].error is None


def test_undecodable_and_junk_bodies_fail_or_pass_per_row(odd: str) -> None:
    client = LLMClient(
        "odd", progress=None, cache=False, max_attempts=2, max_requests_per_minute=600
    )
    latin1, junk, plain = client.process_prompts_sync(
        ["latin1 body", "junk-usage", "plain row"]
    )
    assert latin1.response is None and latin1.attempts == 2
    assert latin1.error is not None and "unreadable response body" in latin1.error
    assert junk.response == "ok" and junk.error is None
    assert plain.response == "plain row"


def test_an_unexpected_exception_is_the_rows_error(
    odd: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = OpenAIChat.parse

    def parse(self: OpenAIChat, body: Any) -> Any:
        if "boom" in json.dumps(body):
            raise RuntimeError("a bug")
        return real(self, body)

    monkeypatch.setattr(OpenAIChat, "parse", parse)
    client = LLMClient("odd", progress=None, cache=False, max_requests_per_minute=600)
    job = client.submit(["fine", "boom", "also fine"])
    fine, boom, also = job.result(timeout=30)

    assert (fine.response, also.response) == ("fine", "also fine")
    assert boom.error == "unexpected error: RuntimeError: a bug"
    assert job.stats.state == "done"
    assert any("unexpected error" in r.getMessage() for r in caplog.records)


def test_a_row_the_cache_cannot_store_does_not_break_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from deluge_nb._cache import ResponseCache
    from deluge_nb._types import Completion

    with ResponseCache(tmp_path / "c.sqlite3") as cache:
        bad = Completion(response=["not", "text"])  # type: ignore[arg-type]
        cache.put("bad", bad)
        cache.put("good", Completion(response="fine", input_tokens=3))
        assert set(cache.get_many(["bad", "good"])) == {"good"}
    assert any("not storing" in r.getMessage() for r in caplog.records)

    # And the simulator still answers through the same kind of cache.
    with serve() as sim:
        register_model("odd-sim", base_url=sim.base_url)
        out = LLMClient("odd-sim", progress=None, cache=tmp_path / "c.sqlite3")
        assert out.process_prompts_sync(["[[sim:echo]]x"])[0].response == "x"
