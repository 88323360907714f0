"""Command line: ``python -m deluge_nb.sim --port 8000 --rpm 600 --tpm 60000``.

Prints the base URL on the first line of stdout and serves until Ctrl-C
(or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from deluge_nb.sim._app import SimConfig
from deluge_nb.sim._serve import serve_async


def _parser() -> argparse.ArgumentParser:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m deluge_nb.sim",
        description="A local OpenAI-compatible server with real rate limits.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on")
    add("--port", type=int, default=8000, help="port; 0 picks a free one")
    add("--rpm", type=float, help="requests per minute (default unlimited)")
    add("--tpm", type=float, help="tokens per minute (default unlimited)")
    add("--burst", type=float, default=defaults.burst_seconds, help="burst seconds")
    add("--latency", type=float, default=defaults.latency_s, help="seconds to reply")
    add(
        "--latency-per-token",
        type=float,
        default=defaults.latency_per_output_token_s,
        help="extra seconds per output token",
    )
    add("--context-window", type=int, default=defaults.context_window)
    add("--default-max-tokens", type=int, default=defaults.default_max_tokens)
    add("--seed", type=int, default=defaults.seed)
    add(
        "--tokenizer",
        default=defaults.tokenizer,
        help="tiktoken encoding, or 'none' for the approximation",
    )
    add(
        "--no-rate-limit-headers",
        action="store_true",
        help="omit the x-ratelimit-* headers",
    )
    add("-v", "--verbose", action="store_true", help="log every decision")
    return parser


async def _serve_until_stopped(config: SimConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    except (NotImplementedError, RuntimeError):  # Windows, or not main thread
        pass

    async with serve_async(config, host=host, port=port) as sim:
        print(sim.base_url, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator from the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    tokenizer = None if str(args.tokenizer).lower() == "none" else args.tokenizer
    try:
        config = SimConfig(
            requests_per_minute=args.rpm,
            tokens_per_minute=args.tpm,
            burst_seconds=args.burst,
            latency_s=args.latency,
            latency_per_output_token_s=args.latency_per_token,
            context_window=args.context_window,
            rate_limit_headers=not args.no_rate_limit_headers,
            seed=args.seed,
            default_max_tokens=args.default_max_tokens,
            tokenizer=tokenizer,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    try:
        asyncio.run(_serve_until_stopped(config, args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
