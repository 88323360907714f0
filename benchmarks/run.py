"""Throughput at the rate limit: deluge_nb and its peers, side by side.

For each scenario every client runs against its own fresh simulator (same
settings, same seed, same prompts, full buckets), one client after another,
and the script prints one markdown table and writes the details as JSON.
Run it through ``bash benchmarks/run.sh`` (see benchmarks/README.md)::

    python benchmarks/run.py                      # everything, ~7 minutes
    python benchmarks/run.py --quick              # smaller n, a smoke run
    python benchmarks/run.py --scenarios S1,S3 --clients deluge_nb,openai
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clients import CLIENTS, Outcome, Settings
from harness import (
    ServerSpec,
    SimProcess,
    floor_seconds,
    ideal_seconds,
    machine,
    make_prompts,
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "latest.json"

PEERS = ("lm-deluge", "openai")
LIMITED = ("deluge_nb", *PEERS)

# A realistic server: 3,000 requests/min, 300,000 tokens/min, 0.3 s to the
# first token and 5 ms per output token. The simulator's buckets hold 2 s of
# refill (its default), as providers enforce per-minute limits over short
# windows.
LIMITED_SERVER = ServerSpec(
    requests_per_minute=3000,
    tokens_per_minute=300_000,
    latency_s=0.3,
    latency_per_output_token_s=0.005,
)
FAULTS = {"500": 0.05, "429": 0.02, "hang": 0.01, "reset": 0.01}


@dataclass(frozen=True)
class Scenario:
    """One row group of the table.

    ``told`` multiplies the server's limits to give what the clients are
    told; None tells them nothing (unlimited).
    """

    name: str
    title: str
    server: ServerSpec
    rows: int
    quick_rows: int
    clients: tuple[str, ...]
    told: float | None = 1.0
    timeout: float | None = None
    deadline_s: float = 240.0
    repeats: int = 1
    check_faults: bool = False
    targets: dict[str, float] = field(default_factory=dict)

    def settings(self) -> Settings:
        server = self.server
        rpm = tpm = None
        if self.told is not None:
            if server.requests_per_minute is not None:
                rpm = server.requests_per_minute * self.told
            if server.tokens_per_minute is not None:
                tpm = server.tokens_per_minute * self.told
        return Settings(
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            timeout=self.timeout,
            deadline_s=self.deadline_s,
        )


SCENARIOS = (
    Scenario(
        "S1",
        "known limits: clients told the true limits",
        LIMITED_SERVER,
        rows=500,
        quick_rows=150,
        clients=LIMITED,
        targets={"max_ratio": 1.05, "max_429_pct": 0.0},
    ),
    Scenario(
        "S2-headers",
        "over-estimated limits (told 2x), rate-limit headers on",
        LIMITED_SERVER,
        rows=500,
        quick_rows=150,
        clients=LIMITED,
        told=2.0,
        targets={"max_ratio": 1.15, "max_429_pct": 2.0},
    ),
    Scenario(
        "S2-no-headers",
        "over-estimated limits (told 2x), no rate-limit headers",
        replace(LIMITED_SERVER, rate_limit_headers=False),
        rows=500,
        quick_rows=150,
        clients=LIMITED,
        told=2.0,
        targets={"max_ratio": 1.35},
    ),
    Scenario(
        "S3",
        "overhead: no limits, no latency",
        ServerSpec(),
        rows=5000,
        quick_rows=1000,
        clients=(*LIMITED, "aiohttp"),
        told=None,
        # Seconds long and CPU-bound, so noisy on a shared machine: three
        # interleaved rounds, the median reported.
        repeats=3,
        targets={"min_vs_aiohttp": 0.8},
    ),
    Scenario(
        "S4",
        "faults: 5% 500, 2% 429 (retry-after 1 s), 1% hang, 1% reset; 5 s timeout",
        replace(LIMITED_SERVER, faults=FAULTS),
        rows=2000,
        quick_rows=400,
        clients=LIMITED,
        timeout=5.0,
        deadline_s=480.0,
        check_faults=True,
    ),
)


# -- running ---------------------------------------------------------------


def run_one(
    scenario: Scenario,
    client: str,
    server: ServerSpec,
    prompts: Sequence[str],
    label: str,
) -> tuple[dict[str, Any], Outcome]:
    """One client against one fresh simulator; the table row and the outcome."""
    settings = scenario.settings()
    with SimProcess(server) as sim:
        cpu_before = _cpu_seconds()
        try:
            outcome = CLIENTS[client](sim.base_url, settings, prompts)
        except Exception as exc:  # a broken client is a result, not the end
            n = len(prompts)
            outcome = Outcome([None] * n, [None] * n, float("nan"))
            outcome.crashed = f"{type(exc).__name__}: {exc}"
        cpu = _cpu_seconds() - cpu_before
        time.sleep(0.2)  # let the server count the last disconnects
        stats = sim.stats()

    n = len(prompts)
    ok = sum(text is not None for text in outcome.texts)
    failed = sum(
        text is None and bool(err)
        for text, err in zip(outcome.texts, outcome.errors, strict=True)
    )
    ideal = ideal_seconds(server, n, stats)
    wall = outcome.wall_s
    requests = stats["requests"]
    row: dict[str, Any] = {
        "scenario": label,
        "client": client,
        "rows": n,
        "wall_s": wall,
        "ideal_s": ideal,
        "ratio": wall / ideal if ideal else None,
        "floor_s": floor_seconds(server, n, stats),
        "ok_rows": ok,
        "ok_per_s": ok / wall if wall == wall and wall > 0 else None,
        "failed_rows": failed,
        "lost_rows": n - ok - failed,
        "requests": requests,
        "rate_limited": stats["rate_limited"],
        "rate_limited_pct": 100.0 * stats["rate_limited"] / max(requests, 1),
        "peak_in_flight": stats["max_in_flight"],
        "client_cpu_ms_per_row": 1000.0 * cpu / n,
        "crashed": outcome.crashed,
        "client_notes": outcome.notes,
        "error_kinds": _error_kinds(outcome.errors),
        "settings": vars(settings),
        "server": server.describe(),
        "sim_stats": {k: v for k, v in stats.items() if k != "admitted_times"},
    }
    return row, outcome


def _cpu_seconds() -> float:
    """CPU time of this process, every thread (the engine's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _error_kinds(errors: Sequence[str | None]) -> dict[str, int]:
    """Failed rows by the first words of their error, for the JSON."""
    kinds: collections.Counter[str] = collections.Counter()
    for error in errors:
        if error:
            kinds[" ".join(error.split()[:6])[:80]] += 1
    return dict(kinds.most_common(8))


def fault_checks(
    faulty: Outcome, clean: Outcome, reference: list[str | None]
) -> dict[str, int]:
    """S4: is every row answered or explained, once, on its own row?

    Every prompt is distinct and the simulator's reply is a hash of the
    request, so replies are distinct too: a response found on two rows was
    duplicated, and a response that differs from the client's own fault-free
    re-run of the same row (or from the reference, a bare aiohttp run with
    the same messages) landed on the wrong row.
    """
    texts = faulty.texts
    counts = collections.Counter(t for t in texts if t is not None)
    both = [
        (a, b)
        for a, b in zip(texts, clean.texts, strict=True)
        if a is not None and b is not None
    ]
    with_ref = [(a, b) for a, b in zip(texts, reference, strict=True) if a is not None]
    return {
        "lost": sum(
            t is None and not e for t, e in zip(texts, faulty.errors, strict=True)
        ),
        "unexplained_errors": sum(
            t is None and e is not None and not e.strip()
            for t, e in zip(texts, faulty.errors, strict=True)
        ),
        "duplicated": sum(c for c in counts.values() if c > 1),
        "misplaced_vs_clean_rerun": sum(a != b for a, b in both),
        "compared_with_clean_rerun": len(both),
        "differ_from_reference": sum(a != b for a, b in with_ref),
        "clean_rerun_differ_from_reference": sum(
            a != b for a, b in zip(clean.texts, reference, strict=True) if a is not None
        ),
    }


def run_scenario(
    scenario: Scenario, clients: Sequence[str], quick: bool, log: Any
) -> list[dict[str, Any]]:
    n = scenario.quick_rows if quick else scenario.rows
    prompts = make_prompts(n, tag_rows=scenario.check_faults)
    chosen = [c for c in scenario.clients if c in clients]
    if scenario.check_faults:
        rows = _with_fault_checks(scenario, chosen, prompts, log)
    else:
        rows = _rounds(scenario, chosen, prompts, log)

    if "aiohttp" in chosen:
        ceiling = next(r for r in rows if r["client"] == "aiohttp")["ok_per_s"]
        for row in rows:
            if ceiling and row["ok_per_s"] is not None:
                row["vs_aiohttp"] = row["ok_per_s"] / ceiling
    return rows


def _rounds(
    scenario: Scenario, chosen: Sequence[str], prompts: Sequence[str], log: Any
) -> list[dict[str, Any]]:
    """Rounds of every client in turn; per client, the median run's row."""
    runs: dict[str, list[dict[str, Any]]] = {client: [] for client in chosen}
    for round_ in range(1, scenario.repeats + 1):
        for client in chosen:
            row, _ = run_one(scenario, client, scenario.server, prompts, scenario.name)
            where = f" round {round_}" if scenario.repeats > 1 else ""
            log(f"  {scenario.name}{where} {client}: {_brief(row)}")
            runs[client].append(row)
    if scenario.repeats == 1:
        return [done[0] for done in runs.values()]

    rows = []
    for done in runs.values():
        walls = [r["wall_s"] for r in done]
        median = statistics.median_low(walls)
        row = next(r for r in done if r["wall_s"] == median)
        row["walls_s"] = walls
        rows.append(row)
    return rows


def _with_fault_checks(
    scenario: Scenario, chosen: Sequence[str], prompts: Sequence[str], log: Any
) -> list[dict[str, Any]]:
    """Each client on the faulty server, then on the same server without faults."""
    # What a fault-free server answers to each row, from a client with no
    # retries and nothing to get wrong (no limits, no latency).
    ref_server = replace(ServerSpec(), seed=scenario.server.seed)
    ref_row, ref = run_one(scenario, "aiohttp", ref_server, prompts, "reference")
    reference = ref.texts
    log(f"  reference (aiohttp, fault-free): {ref_row['ok_rows']}/{len(prompts)} ok")
    repeated = len(prompts) - len({t for t in reference if t is not None})
    if repeated:
        log(f"  warning: {repeated} reference replies repeat another row's")

    rows = []
    for client in chosen:
        row, outcome = run_one(
            scenario, client, scenario.server, prompts, scenario.name
        )
        log(f"  {scenario.name} {client}: {_brief(row)}")
        label = f"{scenario.name} clean re-run"
        clean_server = scenario.server.without_faults()
        clean_row, clean = run_one(scenario, client, clean_server, prompts, label)
        log(f"  {label} {client}: {_brief(clean_row)}")
        row["fault_checks"] = fault_checks(outcome, clean, reference)
        rows += [row, clean_row]
    return rows


def warm_up(clients: Sequence[str], log: Any) -> None:
    """One small untimed run per client: imports, tiktoken, engine thread.

    Costs a process pays once would otherwise land on whichever scenario
    comes first.
    """
    prompts = make_prompts(20)
    settings = Settings(requests_per_minute=None, tokens_per_minute=None)
    with SimProcess(ServerSpec()) as sim:
        for client in clients:
            outcome = CLIENTS[client](sim.base_url, settings, prompts)
            ok = sum(text is not None for text in outcome.texts)
            log(f"  warm-up {client}: {ok}/{len(prompts)} ok")


def _brief(row: dict[str, Any]) -> str:
    crashed = f" CRASHED: {row['crashed']}" if row["crashed"] else ""
    return (
        f"{row['wall_s']:.2f} s, {row['ok_rows']}/{row['rows']} ok, "
        f"{row['rate_limited']} 429s, peak {row['peak_in_flight']} in flight{crashed}"
    )


# -- reporting ---------------------------------------------------------------


def _num(value: float | None, fmt: str) -> str:
    if value is None or value != value:
        return "-"
    return format(value, fmt)


def _notes(row: dict[str, Any]) -> str:
    notes = []
    if "vs_aiohttp" in row:
        notes.append(f"{row['vs_aiohttp']:.2f}x aiohttp's ok/s")
    if "walls_s" in row:
        walls = ", ".join(f"{w:.2f}" for w in row["walls_s"])
        notes.append(f"median of {walls} s")
    checks = row.get("fault_checks")
    if checks:
        if checks["clean_rerun_differ_from_reference"] == 0:
            reference = f"differ from reference {checks['differ_from_reference']}"
        else:
            # lm-deluge sends content as a list of parts: other request, other
            # (equally deterministic) reply; its own clean re-run is the check.
            reference = "reference n/a (other wire messages)"
        notes.append(
            f"lost {checks['lost']}, dup {checks['duplicated']}, misplaced "
            f"{checks['misplaced_vs_clean_rerun']}, unexplained "
            f"{checks['unexplained_errors']}, {reference}"
        )
    if row["scenario"].endswith("clean re-run"):
        notes.append("same server, no faults")
    if row["crashed"]:
        notes.append(f"crashed: {row['crashed']}")
    return "; ".join(notes)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "| scenario | client | rows | wall s | ideal s | wall/ideal | ok rows/s "
        "| 429s (% of requests) | failed rows | peak in-flight | CPU ms/row | notes |"
    )
    lines = [header, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['client']} | {r['rows']} "
            f"| {_num(r['wall_s'], '.2f')} | {_num(r['ideal_s'], '.2f')} "
            f"| {_num(r['ratio'], '.2f')} | {_num(r['ok_per_s'], '.1f')} "
            f"| {r['rate_limited']} ({r['rate_limited_pct']:.1f}%) "
            f"| {r['failed_rows'] + r['lost_rows']} | {r['peak_in_flight']} "
            f"| {r['client_cpu_ms_per_row']:.2f} | {_notes(r)} |"
        )
    return "\n".join(lines)


def evaluate_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """deluge_nb against the issue's targets; reported, never asserted."""
    by = {(r["scenario"], r["client"]): r for r in rows}
    results = []

    def add(target: str, measured: str, met: bool) -> None:
        results.append({"target": target, "measured": measured, "met": met})

    for scenario in SCENARIOS:
        mine = by.get((scenario.name, "deluge_nb"))
        if mine is None:
            continue
        t = scenario.targets
        if "max_ratio" in t and mine["ratio"] is not None:
            add(
                f"{scenario.name}: wall <= {t['max_ratio']}x ideal",
                f"{mine['ratio']:.2f}x",
                mine["ratio"] <= t["max_ratio"],
            )
        if "max_429_pct" in t:
            limit = t["max_429_pct"]
            what = "zero 429s" if limit == 0 else f"429s on <= {limit:g}% of requests"
            add(
                f"{scenario.name}: {what}",
                f"{mine['rate_limited']} ({mine['rate_limited_pct']:.1f}%)",
                mine["rate_limited_pct"] <= limit,
            )
        if "min_vs_aiohttp" in t and "vs_aiohttp" in mine:
            add(
                f"{scenario.name}: >= {t['min_vs_aiohttp']}x bare aiohttp ok rows/s",
                f"{mine['vs_aiohttp']:.2f}x",
                mine["vs_aiohttp"] >= t["min_vs_aiohttp"],
            )
        checks = mine.get("fault_checks")
        if checks:
            bad = (
                checks["lost"]
                + checks["duplicated"]
                + checks["misplaced_vs_clean_rerun"]
                + checks["unexplained_errors"]
            )
            add(
                f"{scenario.name}: no row lost, duplicated, misplaced or unexplained",
                f"lost {checks['lost']}, dup {checks['duplicated']}, misplaced "
                f"{checks['misplaced_vs_clean_rerun']}, unexplained "
                f"{checks['unexplained_errors']}",
                bad == 0,
            )
            add(
                f"{scenario.name}: a fault-free re-run gives the same responses",
                f"{checks['misplaced_vs_clean_rerun']} of "
                f"{checks['compared_with_clean_rerun']} rows differ; the clean "
                "re-run differs from the reference on "
                f"{checks['clean_rerun_differ_from_reference']}",
                checks["misplaced_vs_clean_rerun"] == 0
                and checks["clean_rerun_differ_from_reference"] == 0,
            )
        if scenario.name != "S3":
            peers = [by.get((scenario.name, p)) for p in PEERS]
            peers = [p for p in peers if p is not None]
            if peers and mine["ok_per_s"] is not None:
                # More rows answered wins; on equal rows, less wall time.
                ahead = all(
                    (mine["ok_rows"], -mine["wall_s"]) > (p["ok_rows"], -p["wall_s"])
                    for p in peers
                )
                measured = ", ".join(
                    f"{r['client']} {r['ok_rows']}/{r['rows']} rows in "
                    f"{_num(r['wall_s'], '.1f')} s"
                    for r in (mine, *peers)
                )
                add(f"{scenario.name}: deluge_nb ahead of the peers", measured, ahead)
    return results


def targets_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| deluge_nb target | measured | met |", "|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['target']} | {r['measured']} | {'yes' if r['met'] else 'NO'} |"
        )
    return "\n".join(lines)


# -- command line ------------------------------------------------------------


def _pick(text: str | None, known: Sequence[str], what: str) -> list[str]:
    if not text:
        return list(known)
    chosen = []
    for item in (part.strip() for part in text.split(",")):
        matches = [k for k in known if k == item or k.startswith(item + "-")]
        if not matches:
            raise SystemExit(f"unknown {what} {item!r}; known: {', '.join(known)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenarios",
        help="comma-separated: S1, S2 (both variants), S2-headers, "
        "S2-no-headers, S3, S4 (default: all)",
    )
    parser.add_argument(
        "--clients",
        help=f"comma-separated, from {', '.join(CLIENTS)} (default: all); "
        "aiohttp runs in S3 only",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rows per scenario: a smoke run"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON"
    )
    args = parser.parse_args(argv)
    names = _pick(args.scenarios, [s.name for s in SCENARIOS], "scenario")
    clients = _pick(args.clients, list(CLIENTS), "client")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    started = time.monotonic()
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    rows: list[dict[str, Any]] = []
    warm_up(clients, log)
    for scenario in SCENARIOS:
        if scenario.name in names:
            log(f"{scenario.name}: {scenario.title}")
            rows += run_scenario(scenario, clients, args.quick, log)
    targets = evaluate_targets(rows)
    elapsed = time.monotonic() - started

    info = machine()
    info["load_average_before"] = load_before
    info["load_average_after"] = os.getloadavg()
    print(f"deluge_nb throughput benchmark, {date}{' (--quick)' if args.quick else ''}")
    print(
        f"{info['cpu']}, {info['cores']} cores, Python {info['python']}; "
        f"deluge_nb {info['deluge_nb_commit']}, lm-deluge "
        f"{info['versions']['lm-deluge']}, openai {info['versions']['openai']}; "
        f"whole run {elapsed / 60:.1f} min; load average "
        f"{load_before[0]:.2f} before, {info['load_average_after'][0]:.2f} after"
    )
    print()
    print(markdown_table(rows))
    if targets:
        print()
        print(targets_table(targets))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": date,
                "quick": args.quick,
                "elapsed_s": elapsed,
                "machine": info,
                "scenarios": [
                    {
                        "name": s.name,
                        "title": s.title,
                        "rows": s.quick_rows if args.quick else s.rows,
                        "server": s.server.describe(),
                        "told": s.told,
                        "timeout": s.timeout,
                        "targets": s.targets,
                    }
                    for s in SCENARIOS
                    if s.name in names
                ],
                "runs": rows,
                "targets": targets,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
