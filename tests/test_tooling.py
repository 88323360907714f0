"""The public surface the README promises, and the project's own checks.

ruff (lint and format) and mypy --strict run here, so a change that breaks
them fails the suite that CI runs, not a separate step someone can skip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import deluge_nb
from deluge_nb import sim
from deluge_nb._job import Job

REPO = Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_every_name_exists() -> None:
    assert deluge_nb.__all__ == sorted(deluge_nb.__all__)
    missing = [name for name in deluge_nb.__all__ if not hasattr(deluge_nb, name)]
    assert missing == []


def test_the_calls_the_readme_names_exist() -> None:
    from deluge_nb.local import serve_local_model

    for call in (deluge_nb.LLMClient, deluge_nb.register_model, sim.serve):
        assert callable(call)
    assert callable(serve_local_model)

    frame_calls = {"complete", "acomplete", "submit", "estimate"}
    assert frame_calls <= set(dir(pd.DataFrame({"p": ["x"]}).deluge))
    assert {"complete", "acomplete", "submit"} <= set(dir(pd.Series(["x"]).deluge))

    client_calls = {"process_prompts_sync", "process_prompts_async", "submit"}
    assert client_calls <= set(dir(deluge_nb.LLMClient))
    job_calls = {"result", "cancel", "pause", "resume", "done", "stats"}
    assert job_calls <= set(dir(Job))


def test_private_modules_stay_private() -> None:
    public_modules = {"local", "providers", "sim"}
    exported = {
        name
        for name, value in vars(deluge_nb).items()
        if type(value).__name__ == "module" and not name.startswith("_")
    }
    assert exported <= public_modules


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_static_checks_pass(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
