"""Token estimates: exact with a seeded tiktoken cache, labelled without."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deluge_nb._tokens import count_message_tokens, count_text_tokens, is_exact


@pytest.fixture(autouse=True)
def _seeded_cache() -> None:
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        pytest.fail("TIKTOKEN_CACHE_DIR must point at the seeded tiktoken cache")


def test_k15_chat_overhead_matches_the_servers_prompt_tokens() -> None:
    messages = [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Hi"},
    ]
    # 3 priming + (3 + "system" + "Be brief") + (3 + "user" + "Hi")
    assert count_message_tokens(messages, "o200k_base") == 3 + (3 + 1 + 2) + (3 + 1 + 1)


@pytest.mark.parametrize(
    ("role", "content", "api_prompt_tokens"),
    [
        # prompt_tokens that OpenAI's API reported for one-message requests
        # to gpt-4o-family models, as published in public test suites.
        ("user", "Hello, how are you?", 13),
        ("system", "You are a bot.", 12),
        ("user", "Is there a dress code?", 13),
    ],
)
def test_k15_counts_agree_with_observed_api_usage(
    role: str, content: str, api_prompt_tokens: int
) -> None:
    counted = count_message_tokens([{"role": role, "content": content}], "o200k_base")
    assert abs(counted - api_prompt_tokens) <= 1


def test_exact_counts_with_seeded_cache() -> None:
    assert is_exact("o200k_base")
    assert is_exact("cl100k_base")
    assert count_text_tokens("hello world", "o200k_base") == 2
    assert count_text_tokens("<|endoftext|>", "cl100k_base") > 1  # text, not special


def test_unknown_tokenizer_is_an_estimate() -> None:
    assert not is_exact(None)
    assert count_text_tokens("x" * 40, None) == 10
    assert (
        count_message_tokens([{"role": "user", "content": "x" * 40}], None)
        == 3 + 3 + 1 + 10
    )


def test_k14_offline_empty_cache_falls_back_with_one_warning(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import time, warnings
        warnings.simplefilter("always")
        from deluge_nb._tokens import count_message_tokens, is_exact
        t0 = time.monotonic()
        long, short = [{"role": "user", "content": "x" * 400}], [
            {"role": "user", "content": "y" * 40}
        ]
        with warnings.catch_warnings(record=True) as caught:
            a = count_message_tokens(long, "o200k_base")
            b = count_message_tokens(short, "o200k_base")
        print(a, b, is_exact("o200k_base"), len(caught), round(time.monotonic() - t0))
        print(caught[0].message)
        """
    )
    env = dict(os.environ)
    env["TIKTOKEN_CACHE_DIR"] = str(tmp_path)  # empty: nothing cached
    # An unreachable proxy makes any download fail fast, network or not.
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[name] = "http://127.0.0.1:9"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()[:2]
    a, b, exact, warnings_seen, _ = first.split()
    assert (int(a), int(b)) == (3 + 3 + 1 + 100, 3 + 3 + 1 + 10)
    assert exact == "False"
    assert warnings_seen == "1"
    assert "estimates" in second and "TIKTOKEN_CACHE_DIR" in second
    assert time.monotonic() - started < 30
