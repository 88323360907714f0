"""Stopping a job: cancel, the kernel's interrupt, pause; nothing is lost."""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pandas as pd
import pytest

from deluge_nb import LLMClient, register_model
from deluge_nb._job import CANCELLED
from deluge_nb.sim import serve

SLOW = "[[sim:echo]][[sim:sleep=1]]{text}"


@pytest.fixture(scope="module")
def sim() -> Iterator[object]:
    with serve() as server:
        register_model("sim-stop", base_url=server.base_url, tokenizer="o200k_base")
        yield server


@pytest.fixture(autouse=True)
def _fresh_stats(sim: object) -> None:
    sim.reset_stats()  # type: ignore[attr-defined]


def ten_rows() -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(10)]})


def test_k12_cancel_keeps_finished_rows_and_stops_within_a_second(
    sim: object,
) -> None:
    job = ten_rows().deluge.submit(
        "sim-stop", prompt=SLOW, max_concurrent_requests=1, progress=None
    )
    time.sleep(3.5)
    stopped_at = time.monotonic()
    job.cancel()
    out = job.result(timeout=5)
    assert time.monotonic() - stopped_at < 1.0

    done = out["response"].notna()
    assert done.sum() == 3
    assert out.loc[done, "response"].tolist() == ["row 0", "row 1", "row 2"]
    assert (out.loc[~done, "error"] == CANCELLED).all()
    assert job.stats.state == "stopped"
    assert job.stats.limiter.in_flight == 0
    totals = out.attrs["deluge"]
    assert (totals["rows"], totals["succeeded"], totals["cancelled"]) == (10, 3, 7)


def _sigint_to_process() -> None:
    # What Jupyter's stop button does: SIGINT to the kernel process.
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize(
    "interrupt", [_thread.interrupt_main, _sigint_to_process], ids=["flag", "sigint"]
)
def test_k03_kernel_interrupt_during_complete_returns_the_partial_frame(
    sim: object, interrupt: Callable[[], None]
) -> None:
    timer = threading.Timer(2.5, interrupt)
    timer.start()
    started = time.monotonic()
    try:
        out = ten_rows().deluge.complete(
            "sim-stop", prompt=SLOW, max_concurrent_requests=1, progress=None
        )
    finally:
        timer.cancel()
    elapsed = time.monotonic() - started
    assert elapsed < 3.5  # stopped within about a second of the interrupt
    assert out["response"].notna().sum() == 2
    assert out["response"].iloc[:2].tolist() == ["row 0", "row 1"]
    assert (out["error"].iloc[2:] == CANCELLED).all()


def test_pause_holds_new_requests_and_resume_goes_on(sim: object) -> None:
    client = LLMClient("sim-stop", progress=None, max_concurrent_requests=1)
    prompts = [f"[[sim:echo]][[sim:sleep=0.2]]{i}" for i in range(6)]
    job = client.submit(prompts)
    time.sleep(0.3)
    job.pause()
    assert job.paused and job.stats.state == "paused"
    time.sleep(0.3)  # the request in flight finishes
    held = sim.stats()["requests"]  # type: ignore[attr-defined]
    time.sleep(0.6)
    assert sim.stats()["requests"] == held  # type: ignore[attr-defined]
    job.resume()
    results = job.result(timeout=10)
    assert [r.response for r in results] == [str(i) for i in range(6)]
    assert job.stats.state == "done"


def test_cancel_before_anything_ran(sim: object) -> None:
    client = LLMClient("sim-stop", progress=None, max_concurrent_requests=1)
    job = client.submit(["[[sim:echo]][[sim:sleep=1]]a"] * 3)
    job.cancel()
    results = job.result(timeout=5)
    assert all(r.error == CANCELLED for r in results)


def test_a_second_interrupt_while_stopping_keeps_the_partial_result(
    sim: object,
) -> None:
    job = ten_rows().deluge.submit(
        "sim-stop", prompt=SLOW, max_concurrent_requests=1, progress=None
    )
    time.sleep(1.5)
    real = job._future
    assert real is not None

    class PressedAgain:
        """The job's future, but the first wait is cut by another interrupt."""

        pressed = False

        def result(self, timeout: float | None = None) -> object:
            if not self.pressed:
                self.pressed = True
                raise KeyboardInterrupt
            return real.result(timeout)

    completions = job._stop_after_interrupt(PressedAgain())  # type: ignore[arg-type]
    assert job.done and job.stats.state == "stopped"
    assert [c.response for c in completions[:1]] == ["row 0"]
    assert all(c.error == CANCELLED for c in completions[2:])


def test_a_job_started_again_waits_for_the_first_ones_requests(
    sim: object,
) -> None:
    # A cell run again while its first run still goes: the same requests are
    # in flight, and they are paid for once.
    frame = pd.DataFrame({"text": [f"again {i}" for i in range(6)]})
    options = {"prompt": SLOW, "progress": None, "cache": False}
    first = frame.deluge.submit("sim-stop", **options)
    time.sleep(0.3)
    second = frame.deluge.submit("sim-stop", **options)
    out_second = second.result(timeout=30)
    out_first = first.result(timeout=30)

    assert sim.stats()["requests"] == 6  # type: ignore[attr-defined]
    expected = [f"again {i}" for i in range(6)]
    assert out_first["response"].tolist() == expected
    assert out_second["response"].tolist() == expected
    # Each request was sent by one job; the other took its answer.
    assert (out_first["cached"] != out_second["cached"]).all()
    assert ((out_first["attempts"] == 0) == out_first["cached"]).all()


def test_a_followed_job_that_stops_leaves_its_rows_to_the_follower(
    sim: object,
) -> None:
    frame = pd.DataFrame({"text": [f"handover {i}" for i in range(4)]})
    options = {"prompt": SLOW, "progress": None, "cache": False}
    first = frame.deluge.submit("sim-stop", max_concurrent_requests=1, **options)
    time.sleep(0.3)
    second = frame.deluge.submit("sim-stop", **options)
    time.sleep(0.3)
    first.cancel()
    out = second.result(timeout=30)

    assert out["response"].tolist() == [f"handover {i}" for i in range(4)]
    assert out["error"].isna().all()
