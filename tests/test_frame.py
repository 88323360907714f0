"""The pandas accessor: prompts from columns and templates, results by position."""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial

import numpy as np
import pandas as pd
import pytest

import deluge_nb
from deluge_nb import ConfigurationError, register_model
from deluge_nb._frame import RESULT_DTYPES, render_prompts
from deluge_nb.sim import serve

ECHO = "[[sim:echo]]"


@pytest.fixture(scope="module")
def sim() -> Iterator[object]:
    with serve() as server:
        register_model(
            "sim-frame",
            base_url=server.base_url,
            tokenizer="o200k_base",
            context_window=2048,
        )
        register_model("sim-frame-nowindow", base_url=server.base_url)
        yield server


@pytest.fixture(autouse=True)
def _fresh_stats(sim: object) -> None:
    sim.reset_stats()  # type: ignore[attr-defined]


def complete(frame: pd.DataFrame | pd.Series, **options: object) -> pd.DataFrame:
    options.setdefault("progress", None)
    return frame.deluge.complete("sim-frame", **options)  # type: ignore[union-attr]


@pytest.mark.parametrize("missing", [np.nan, None, pd.NA])
def test_k18_missing_prompts_are_not_sent(sim: object, missing: object) -> None:
    df = pd.DataFrame({"text": ["a", missing, "c"]}, dtype=object)
    out = complete(df, prompt=ECHO + "{text}")

    assert sim.stats()["requests"] == 2  # type: ignore[attr-defined]
    assert out["response"].tolist()[0] == "a"
    assert out["response"].tolist()[2] == "c"
    assert pd.isna(out["response"].iloc[1])
    assert "nan" not in out["response"].fillna("").tolist()
    assert pd.isna(out["error"].iloc[1]) and out["attempts"].iloc[1] == 0


def test_k18_non_string_cells_are_formatted_deliberately(sim: object) -> None:
    df = pd.DataFrame({"n": [42, 7], "x": [1.5, 2.25]})
    out = complete(df, prompt=ECHO + "{n} costs {x:.2f}")
    assert out["response"].tolist() == ["42 costs 1.50", "7 costs 2.25"]

    column = pd.DataFrame({"p": [42, "word"]}, dtype=object)
    assert render_prompts(column, "p") == ["42", "word"]

    # A list that holds a missing value is a value, not a missing cell.
    lists = pd.DataFrame({"p": [[math.nan], [None], None]}, dtype=object)
    assert render_prompts(lists, "p") == ["[nan]", "[None]", None]


def test_k19_results_land_on_their_own_rows_whatever_the_index(sim: object) -> None:
    full = pd.DataFrame(
        {"text": [f"row {i}" for i in range(13)], "delay": [0.0] * 10 + [0.4, 0.2, 0.0]}
    )
    filtered = full[full.index >= 10]
    assert filtered.index.tolist() == [10, 11, 12]

    # The first row answers last, the last first.
    out = complete(filtered, prompt=ECHO + "[[sim:sleep={delay}]]{text}")

    assert out.index.tolist() == [10, 11, 12]
    assert out["response"].tolist() == ["row 10", "row 11", "row 12"]
    assert out["text"].tolist() == filtered["text"].tolist()


@pytest.mark.parametrize(
    "index",
    [
        pd.Index([3, 3, 1]),
        pd.Index(["c", "a", "b"]),
        pd.MultiIndex.from_tuples([("x", 1), ("x", 0), ("y", 5)]),
    ],
    ids=["duplicated", "shuffled-strings", "multiindex"],
)
def test_any_index_keeps_rows_in_place(sim: object, index: pd.Index) -> None:
    df = pd.DataFrame({"text": ["first", "second", "third"]}, index=index)
    out = complete(df, prompt=ECHO + "{text}")
    assert out.index.equals(index)
    assert out["response"].tolist() == ["first", "second", "third"]


def test_k13_over_long_prompt_fails_alone_and_order_is_kept(sim: object) -> None:
    too_long = "word " * 3000  # about 3000 tokens, window is 2048
    df = pd.DataFrame({"text": ["one", too_long, "three"]})
    out = complete(df, prompt=ECHO + "{text}", max_tokens=16)

    assert out["response"].iloc[0] == "one" and out["response"].iloc[2] == "three"
    assert pd.isna(out["response"].iloc[1])
    assert "context window" in out["error"].iloc[1]
    assert out["attempts"].iloc[1] == 0  # never sent
    assert sim.stats()["requests"] == 2  # type: ignore[attr-defined]


def test_k13_server_side_context_error_is_a_row_error(sim: object) -> None:
    # A model with no known window: the server says no, and it is not retried.
    too_long = "word " * 9000
    df = pd.DataFrame({"text": ["one", too_long, "three"]})
    out = df.deluge.complete(
        "sim-frame-nowindow", prompt=ECHO + "{text}", max_tokens=16, progress=None
    )
    assert (
        out["response"].tolist()[0] == "one" and out["response"].tolist()[2] == "three"
    )
    assert "HTTP 400" in out["error"].iloc[1]
    assert out["attempts"].iloc[1] == 1


def test_result_columns_dtypes_and_input_untouched(sim: object) -> None:
    df = pd.DataFrame({"text": ["a", "b"], "n": pd.array([1, 2], dtype="Int64")})
    before = df.copy()
    out = complete(df, prompt="text")

    pd.testing.assert_frame_equal(df, before)
    assert list(out.columns) == ["text", "n", *RESULT_DTYPES]
    assert out["n"].dtype == df["n"].dtype and out["text"].dtype == df["text"].dtype
    for column, dtype in RESULT_DTYPES.items():
        assert out[column].dtype == pd.api.types.pandas_dtype(dtype), column
    assert (out["input_tokens"] > 0).all() and (out["output_tokens"] > 0).all()
    assert (out["cost_usd"] == 0.0).all()
    assert (out["model"] == "sim-frame").all()
    assert out["finish_reason"].isin(["stop", "length"]).all()
    assert (out["attempts"] == 1).all() and not out["cached"].any()
    assert out["error"].isna().all()


def test_template_errors_are_explained() -> None:
    df = pd.DataFrame({"text": ["a"]})
    with pytest.raises(ConfigurationError, match="not columns"):
        df.deluge.complete("sim-frame", prompt="Say {nope}")
    with pytest.raises(ConfigurationError, match="neither a column nor a template"):
        df.deluge.complete("sim-frame", prompt="txt")
    with pytest.raises(ConfigurationError, match="which column"):
        df.deluge.complete("sim-frame")


def test_result_column_clash_asks_for_a_prefix(sim: object) -> None:
    out = complete(pd.DataFrame({"text": ["a"]}), prompt=ECHO + "{text}")
    with pytest.raises(ConfigurationError, match="prefix"):
        complete(out, prompt=ECHO + "{text}")
    again = complete(out, prompt=ECHO + "again {text}", prefix="v2_")
    assert again["v2_response"].tolist() == ["again a"]
    assert again["response"].tolist() == ["a"]


def test_system_message_and_chat_message_cells(sim: object) -> None:
    messages = [{"role": "user", "content": ECHO + "from a message list"}]
    df = pd.DataFrame({"chat": [messages]})
    out = complete(df, prompt="chat")
    assert out["response"].tolist() == ["from a message list"]
    out = complete(pd.DataFrame({"t": ["x"]}), prompt=ECHO + "{t}", system="Be brief")
    assert out["input_tokens"].iloc[0] > 10  # system message counted


def test_series_accessor(sim: object) -> None:
    s = pd.Series([ECHO + "a", None, ECHO + "c"], index=[5, 6, 7], name="q")
    out = complete(s)
    assert out.index.tolist() == [5, 6, 7]
    assert out["q"].tolist()[0] == ECHO + "a"
    assert out["response"].tolist()[0] == "a" and pd.isna(out["response"].iloc[1])
    out = complete(pd.Series(["b"]), prompt=ECHO + "say {prompt}")
    assert out["response"].tolist() == ["say b"]


async def test_acomplete_from_a_running_loop(sim: object) -> None:
    df = pd.DataFrame({"text": ["x", "y"]})
    out = await df.deluge.acomplete("sim-frame", prompt=ECHO + "{text}", progress=None)
    assert out["response"].tolist() == ["x", "y"]


def test_accessor_is_registered_by_import() -> None:
    assert hasattr(pd.DataFrame, "deluge") and hasattr(pd.Series, "deluge")
    assert deluge_nb.__version__


def test_submit_returns_at_once_and_result_gives_the_frame(sim: object) -> None:
    df = pd.DataFrame({"text": ["a", "b", "c"]}, index=[7, 8, 9])
    job = df.deluge.submit(
        "sim-frame", prompt=ECHO + "[[sim:sleep=0.3]]{text}", progress=None
    )
    assert not job.done
    out = job.result(timeout=10)
    assert job.done and job.stats.state == "done"
    assert out.index.tolist() == [7, 8, 9]
    assert out["response"].tolist() == ["a", "b", "c"]


async def test_await_a_submitted_job(sim: object) -> None:
    job = pd.DataFrame({"text": ["x"]}).deluge.submit(
        "sim-frame", prompt=ECHO + "{text}", progress=None
    )
    out = await job
    assert out["response"].tolist() == ["x"]


def test_column_clash_is_refused_before_anything_is_sent(sim: object) -> None:
    df = pd.DataFrame({"text": ["a"], "response": ["old"]})
    with pytest.raises(ConfigurationError, match="prefix"):
        complete(df, prompt=ECHO + "{text}")
    assert sim.stats()["requests"] == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Translate {text.__class__}", "not a plain column name"),
        ("First letter {text[0]}", "not a plain column name"),
        ("Translate {text", "not a valid str.format template"),
        ("Translate text}", "not a valid str.format template"),
        ("Say {}", "positional field"),
    ],
)
def test_templates_cannot_reach_into_cells(template: str, message: str) -> None:
    df = pd.DataFrame({"text": ["a"]})
    with pytest.raises(ConfigurationError, match=message):
        df.deluge.complete("sim-frame", prompt=template)


def test_template_format_specs_and_literal_braces_work(sim: object) -> None:
    df = pd.DataFrame({"text": ["ab"], "x": [3.14159]})
    out = complete(df, prompt=ECHO + "{{json}} {text:>4} {x:.2f}")
    assert out["response"].tolist() == ["{json}   ab 3.14"]


def test_estimate_limits_do_not_change_later_calls(sim: object) -> None:
    df = pd.DataFrame({"text": ["a", "b"]})
    before = deluge_nb.LLMClient("sim-frame").limiter.snapshot()
    est = df.deluge.estimate(
        "sim-frame", prompt="{text}", max_tokens=10, max_tokens_per_minute=600
    )
    assert "600 tokens/min" in est.limits
    after = deluge_nb.LLMClient("sim-frame").limiter.snapshot()
    assert after.max_tokens_per_minute == before.max_tokens_per_minute


@pytest.mark.parametrize("prefix", [None, ""])
def test_no_prefix_by_none_or_empty(sim: object, prefix: str | None) -> None:
    out = complete(pd.DataFrame({"t": [ECHO + "a"]}), prompt="t", prefix=prefix)
    assert out.columns.tolist()[:2] == ["t", "response"]
    assert out["response"].tolist() == ["a"]


def test_a_prefix_that_is_not_text_is_refused(sim: object) -> None:
    with pytest.raises(ConfigurationError, match="prefix must be a string"):
        complete(pd.DataFrame({"t": [ECHO + "a"]}), prompt="t", prefix=3)
    assert sim.stats()["requests"] == 0  # type: ignore[attr-defined]


def test_a_cell_its_format_spec_cannot_take_names_its_row(sim: object) -> None:
    df = pd.DataFrame({"x": [1.5, "n/a", 2.0]}, index=["r1", "r2", "r3"], dtype=object)

    for call in (complete, lambda f, **o: f.deluge.estimate("sim-frame", **o)):
        with pytest.raises(ConfigurationError) as raised:
            call(df, prompt=ECHO + "{x:.1f}")
        message = str(raised.value)
        assert "row 1" in message and "'r2'" in message and "'n/a'" in message

    assert sim.stats()["requests"] == 0  # type: ignore[attr-defined]


def test_a_template_over_a_repeated_column_name_is_refused(sim: object) -> None:
    df = pd.DataFrame([["a", "b"]], columns=["text", "text"])
    with pytest.raises(ConfigurationError, match="more than one column is named"):
        complete(df, prompt=ECHO + "{text}")


def test_a_limit_left_by_an_earlier_call_is_named_and_ends_on_reregistering(
    sim: object,
) -> None:
    register_model("sim-frame-tpm", base_url=sim.base_url, tokenizer="o200k_base")  # type: ignore[attr-defined]
    df = pd.DataFrame({"t": [ECHO + "a"]})
    complete_tpm = partial(df.deluge.complete, "sim-frame-tpm", prompt="t")
    complete_tpm(progress=None, max_tokens_per_minute=10)

    later = complete_tpm(progress=None)  # gives no limit: 10 stays in force
    assert "max_tokens_per_minute in this or an earlier call" in later["error"][0]

    register_model("sim-frame-tpm", base_url=sim.base_url, tokenizer="o200k_base")  # type: ignore[attr-defined]
    again = complete_tpm(progress=None)
    assert again["response"].tolist() == ["a"]


def test_estimate_output_tokens_expected_or_bounded(sim: object) -> None:
    df = pd.DataFrame({"t": ["a", "b", "c"]})
    bound = df.deluge.estimate("sim-frame", prompt="t", max_tokens=50)
    expected = df.deluge.estimate(
        "sim-frame", prompt="t", max_tokens=50, expected_output_tokens=5
    )

    assert bound.summary()["output tokens (at most)"] == 150
    assert expected.summary()["output tokens (expected)"] == 15
    with pytest.raises(ConfigurationError, match="expected_output_tokens"):
        df.deluge.estimate("sim-frame", prompt="t", expected_output_tokens=-5)


def test_complete_takes_input_and_output_token_limits(sim: object) -> None:
    register_model("sim-frame-io", base_url=sim.base_url, tokenizer="o200k_base")  # type: ignore[attr-defined]
    df = pd.DataFrame({"t": [ECHO + "a", ECHO + "b"]})
    limits = {"max_input_tokens_per_minute": 600, "max_output_tokens_per_minute": 60}

    report = df.deluge.estimate("sim-frame-io", prompt="t", max_tokens=30, **limits)
    out = df.deluge.complete(
        "sim-frame-io", prompt="t", max_tokens=30, progress=None, **limits
    )

    # Two requests reserve 60 output tokens: a minute at 60/min.
    assert report.wall_time_s == pytest.approx(60.0, rel=0.05)
    assert out["response"].tolist() == ["a", "b"]
    snap = out.attrs["deluge"]
    limiter = deluge_nb.LLMClient("sim-frame-io").limiter.snapshot()
    assert snap["succeeded"] == 2
    assert limiter.max_input_tokens_per_minute == 600
    assert limiter.max_output_tokens_per_minute == 60
