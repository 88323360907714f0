"""The README's demo, in the mode that cannot run here: OpenAI.

``bash scripts/demo.sh --model gpt-4o-mini`` with ``OPENAI_API_KEY`` set
sends HumanEval prompts to OpenAI. No provider is reachable from this
machine, so ``OPENAI_BASE_URL`` (which the official SDK reads too) points
the built-in gpt-4o-mini at the simulator, which speaks the same protocol;
the rest of the path, key, prices and all, is the one a user gets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from deluge_nb.sim import serve

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"
CANARY_KEY = "sk-demo-CANARY-0042"


def test_demo_with_a_model_and_a_key_runs_against_the_openai_endpoint() -> None:
    with serve(requests_per_minute=600, tokens_per_minute=60_000) as sim:
        env = {
            **os.environ,
            "OPENAI_API_KEY": CANARY_KEY,
            "OPENAI_BASE_URL": sim.base_url,
            "DELUGE_NB_CACHE": "off",
        }
        done = subprocess.run(
            [sys.executable, str(DEMO), "--model", "gpt-4o-mini", "--rows", "6"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        received = sim.stats()["requests"]

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "model gpt-4o-mini (OpenAI)" in output
    assert "starting SmolLM2" not in output
    assert re.search(r"^with a response 6$", output, re.M), output
    assert re.search(r"^errors +0$", output, re.M), output
    assert received == 6
    # Priced at gpt-4o-mini's registry prices, so a real (small) cost.
    cost = float(re.search(r"^cost +\$([0-9.]+)$", output, re.M).group(1))
    assert cost > 0
    assert CANARY_KEY not in output
