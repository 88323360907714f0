"""Command line: ``python -m deluge_nb.sim --port 8000 --rpm 600 --tpm 60000``.

Prints the base URL on the first line of stdout and serves until Ctrl-C
(or SIGTERM). To rehearse a job against a flaky Anthropic-like server::

    python -m deluge_nb.sim --rpm 50 --anthropic-itpm 30000 \
        --anthropic-otpm 8000 --fault 529=0.02 --fault reset=0.01
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from deluge_nb.sim._config import ALL_FAULT_KINDS, SimConfig
from deluge_nb.sim._serve import serve_async


def _fault(text: str) -> tuple[str, float]:
    """Parse ``KIND=RATE`` for ``--fault``."""
    kind, sep, rate = text.partition("=")
    kind = kind.strip()
    if not sep or kind not in ALL_FAULT_KINDS:
        raise argparse.ArgumentTypeError(
            f"expected KIND=RATE with KIND one of {', '.join(ALL_FAULT_KINDS)}, "
            f"got {text!r}"
        )
    try:
        return kind, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the rate of {kind!r} must be a number, got {rate!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m deluge_nb.sim",
        description=(
            "A local OpenAI- and Anthropic-compatible server with real rate "
            "limits and injectable faults."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on")
    add("--port", type=int, default=8000, help="port; 0 picks a free one")
    add("--rpm", type=float, help="requests per minute (default unlimited)")
    add("--tpm", type=float, help="OpenAI tokens per minute (default unlimited)")
    add(
        "--anthropic-itpm",
        type=float,
        help="Anthropic input tokens per minute (default unlimited)",
    )
    add(
        "--anthropic-otpm",
        type=float,
        help="Anthropic output tokens per minute (default unlimited)",
    )
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
        help="omit the x-ratelimit-* and anthropic-ratelimit-* headers",
    )
    add(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=(
            "inject a fault into this fraction of requests (repeatable); KIND "
            f"is one of {', '.join(ALL_FAULT_KINDS)}"
        ),
    )
    add(
        "--fault-retry-after",
        type=float,
        default=defaults.fault_retry_after_s,
        help="seconds an injected 429 asks the client to wait",
    )
    add(
        "--storm-seconds",
        type=float,
        default=defaults.storm_s,
        help="how long a 429 storm lasts",
    )
    add("-v", "--verbose", action="store_true", help="log every decision")
    return parser


def _config_from_args(args: argparse.Namespace) -> SimConfig:
    """The `SimConfig` that parsed command-line arguments describe.

    Raises
    ------
    ValueError
        If a value is out of range (a fault rate above 1, for example).
    """
    tokenizer = None if str(args.tokenizer).lower() == "none" else args.tokenizer
    return SimConfig(
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        input_tokens_per_minute=args.anthropic_itpm,
        output_tokens_per_minute=args.anthropic_otpm,
        burst_seconds=args.burst,
        latency_s=args.latency,
        latency_per_output_token_s=args.latency_per_token,
        context_window=args.context_window,
        rate_limit_headers=not args.no_rate_limit_headers,
        seed=args.seed,
        default_max_tokens=args.default_max_tokens,
        tokenizer=tokenizer,
        faults=dict(args.fault),
        fault_retry_after_s=args.fault_retry_after,
        storm_s=args.storm_seconds,
    )


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
    try:
        config = _config_from_args(args)
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
