"""The registry and cost: prices are USD per million tokens, in one place."""

from __future__ import annotations

import pytest

import deluge_nb
from deluge_nb import (
    ConfigurationError,
    ImplausiblePriceError,
    UnknownModelError,
    Usage,
)
from deluge_nb._models import get_model, register_model


def test_k16_cached_input_is_billed_once_at_its_own_price() -> None:
    info = register_model(
        "k16-model",
        base_url="http://127.0.0.1:1/v1",
        input_price=0.50,
        cached_input_price=0.05,
        output_price=1.50,
    )
    usage = Usage(input_tokens=20_212, cached_input_tokens=16_298, output_tokens=931)
    expected = 3_914 * 0.50 / 1e6 + 16_298 * 0.05 / 1e6 + 931 * 1.50 / 1e6
    assert info.cost_usd(usage) == pytest.approx(expected, rel=1e-12)


def test_k16_reasoning_tokens_are_not_billed_twice() -> None:
    info = get_model("o4-mini")
    plain = info.cost_usd(Usage(input_tokens=100, output_tokens=500))
    reasoning = info.cost_usd(
        Usage(input_tokens=100, output_tokens=500, reasoning_tokens=400)
    )
    assert plain == reasoning


def test_k17_price_per_million() -> None:
    info = register_model("k17-model", base_url="http://x/v1", input_price=0.15)
    assert info.cost_usd(Usage(input_tokens=1_000)) == pytest.approx(0.00015)


@pytest.mark.parametrize("price", [0.00000015, 0.00015, -1.0, 5000.0])
def test_k17_prices_that_are_not_per_million_are_rejected(price: float) -> None:
    with pytest.raises(ImplausiblePriceError, match="per million"):
        register_model("bad-price", base_url="http://x/v1", input_price=price)
    with pytest.raises(UnknownModelError):
        get_model("bad-price")


def test_builtin_prices_are_all_plausible() -> None:
    builtin = [get_model(n) for n in deluge_nb.known_models()]
    builtin = [info for info in builtin if info.provider == "openai"]
    assert len(builtin) >= 10
    for info in builtin:
        assert info.input_price > 0 and info.output_price >= info.input_price
        assert info.context_window and info.context_window >= 8192


def test_registered_openai_compatible_model_defaults() -> None:
    info = register_model("my-llama", base_url="http://127.0.0.1:8080/v1/")
    assert info.provider == "openai-compatible"
    assert info.base_url == "http://127.0.0.1:8080/v1"
    assert info.api_key_env is None
    assert (info.input_price, info.output_price) == (0.0, 0.0)
    assert info.cost_usd(Usage(input_tokens=10_000, output_tokens=10_000)) == 0.0


def test_unknown_model_suggests_and_explains() -> None:
    with pytest.raises(UnknownModelError) as caught:
        get_model("gpt-4o-mnii")
    message = str(caught.value)
    assert "gpt-4o-mini" in message and "register_model" in message


def test_dated_snapshot_uses_its_family() -> None:
    info = get_model("gpt-4o-mini-2024-07-18")
    assert info.api_model == "gpt-4o-mini-2024-07-18"
    assert info.input_price == get_model("gpt-4o-mini").input_price


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_url": "127.0.0.1:8000/v1"}, "http:// or https://"),
        ({"base_url": "http://127.0.0.1:8000/v1", "tokenizer": "nope"}, "tiktoken"),
    ],
)
def test_register_model_refuses_what_would_fail_every_row(
    options: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        register_model("my-llm", **options)


def test_openai_base_url_moves_builtin_models_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:8")
    register_model("own-endpoint", base_url="http://127.0.0.1:7/v1")

    assert get_model("gpt-4o-mini").base_url == "http://127.0.0.1:9/v1"
    assert get_model("gpt-4o-mini-2024-07-18").base_url == "http://127.0.0.1:9/v1"
    anthropic = [m for m in deluge_nb.known_models() if m.startswith("claude")][0]
    assert get_model(anthropic).base_url == "http://127.0.0.1:8/v1"
    assert get_model("own-endpoint").base_url == "http://127.0.0.1:7/v1"

    monkeypatch.delenv("OPENAI_BASE_URL")
    assert get_model("gpt-4o-mini").base_url == "https://api.openai.com/v1"


def test_openai_base_url_without_a_scheme_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000/v1")
    with pytest.raises(ConfigurationError, match="OPENAI_BASE_URL"):
        get_model("gpt-4o-mini")
