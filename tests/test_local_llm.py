"""Real completions from SmolLM2 through llama.cpp's server."""

from __future__ import annotations

import pandas as pd
import pytest

import deluge_nb  # noqa: F401  (registers the .deluge accessor)
from deluge_nb.local import LocalServer

pytestmark = pytest.mark.local_llm


def test_three_prompts_get_real_answers(local_llm: LocalServer) -> None:
    df = pd.DataFrame(
        {
            "text": [
                "Name one colour of the rainbow.",
                "What is the capital of France?",
                "Say hello in one word.",
            ]
        },
        index=[30, 10, 20],  # not sorted: results must follow positions
    )
    before = df.copy()

    out = df.deluge.complete(
        local_llm.model, prompt="text", max_tokens=16, progress=None
    )

    pd.testing.assert_frame_equal(df, before)  # the input is not mutated
    assert list(out.index) == [30, 10, 20]
    assert out["text"].tolist() == before["text"].tolist()
    for row in out.itertuples():
        assert isinstance(row.response, str) and row.response.strip(), row
        assert row.input_tokens > 0, row
        assert 1 <= row.output_tokens <= 16, row
        assert pd.isna(row.error), row
        assert row.cost_usd == 0.0, row
