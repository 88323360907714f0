"""Choosing and driving progress views: auto-selection, fallbacks, text output."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from deluge_nb import _progress, register_model
from deluge_nb._limits import Limiter
from deluge_nb._progress import (
    WIDGETS_MISSING,
    ManualView,
    RichView,
    TqdmView,
    choose_auto,
    close_quietly,
    drive,
    in_kernel,
    make_view,
)
from deluge_nb._stats import JobStats, StatsSnapshot
from deluge_nb.sim import serve

ECHO = "[[sim:echo]]{text}"


@pytest.fixture(scope="module")
def sim() -> Iterator[object]:
    with serve() as server:
        register_model("sim-progress", base_url=server.base_url, tokenizer="o200k_base")
        yield server


@pytest.fixture
def limiter() -> Limiter:
    return Limiter(600, 60_000, 8)


@pytest.fixture
def in_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    """As inside a Jupyter kernel; the panel is not displayed anywhere."""
    monkeypatch.setattr(_progress, "in_kernel", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda obj: None)
    monkeypatch.setattr(_progress, "_fallback_explained", False)


@pytest.fixture
def without_ipywidgets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "ipywidgets"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)


class RecordingView:
    """A view that keeps every snapshot it was shown."""

    interval_s = 0.05

    def __init__(self) -> None:
        self.updates: list[tuple[float, StatsSnapshot]] = []
        self.closed: list[StatsSnapshot] = []

    def update(self, snap: StatsSnapshot) -> None:
        self.updates.append((time.monotonic(), snap))

    def close(self, snap: StatsSnapshot) -> None:
        self.closed.append(snap)


def finished(limiter: Limiter, **changes: Any) -> StatsSnapshot:
    stats = JobStats(total=3, limiter=limiter)
    stats.done = stats.succeeded = 3
    stats.state = "done"
    stats.cost_usd = 0.0042
    for name, value in changes.items():
        setattr(stats, name, value)
    return stats.snapshot()


# -- make_view ----------------------------------------------------------------


@pytest.mark.parametrize("progress", [None, False, "none"])
def test_no_progress(progress: Any, limiter: Limiter) -> None:
    assert make_view(progress, 3, limiter=limiter) is None


def test_unknown_progress_names_the_choices(limiter: Limiter) -> None:
    with pytest.raises(ValueError, match="'panel', 'rich', 'tqdm', 'manual'"):
        make_view("fancy", 3, limiter=limiter)


def test_a_view_object_passes_through(limiter: Limiter) -> None:
    view = RecordingView()
    assert make_view(view, 3, limiter=limiter) is view


def test_explicit_kinds(
    limiter: Limiter, monkeypatch: pytest.MonkeyPatch, in_notebook: None
) -> None:
    from deluge_nb._panel import Panel

    panel = make_view("panel", 3, limiter=limiter)
    assert isinstance(panel, Panel)
    assert panel.sliders["requests"].value == 600
    assert isinstance(make_view("manual", 3), ManualView)
    tqdm_view = make_view("tqdm", 3)
    assert isinstance(tqdm_view, TqdmView)
    tqdm_view.close(finished(limiter))
    rich_view = make_view("rich", 3)
    assert isinstance(rich_view, RichView)
    rich_view.close(finished(limiter))


def test_true_means_auto(limiter: Limiter, in_notebook: None) -> None:
    from deluge_nb._panel import Panel

    assert isinstance(make_view(True, 3, limiter=limiter), Panel)


def test_panel_gets_the_limiter_and_the_controls(
    limiter: Limiter, in_notebook: None
) -> None:
    class Controls:
        paused = False
        largest_request_tokens = 0.0

        def pause(self) -> None: ...

        def resume(self) -> None: ...

        def cancel(self) -> None: ...

    view = make_view("auto", 3, limiter=limiter, controls=Controls())
    assert view.stop_button is not None  # type: ignore[union-attr]
    assert view.sliders["concurrency"].value == 8  # type: ignore[union-attr]


# -- what "auto" picks --------------------------------------------------------


def test_auto_in_a_notebook_with_ipywidgets_is_the_panel(in_notebook: None) -> None:
    assert choose_auto() == "panel"


def test_auto_in_a_terminal_is_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "in_kernel", lambda: False)
    monkeypatch.setattr(_progress, "_stderr_is_terminal", lambda: True)
    assert choose_auto() == "rich"

    monkeypatch.setitem(sys.modules, "rich", None)
    assert choose_auto() == "tqdm"


def test_auto_into_a_log_is_a_line_every_30_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_progress, "in_kernel", lambda: False)
    monkeypatch.setattr(_progress, "_stderr_is_terminal", lambda: False)
    assert choose_auto() == "manual"
    view = make_view("auto", 3)
    assert isinstance(view, ManualView) and view.interval_s == 30.0


def test_k04_auto_without_ipywidgets_falls_back_to_text_and_says_why_once(
    limiter: Limiter,
    in_notebook: None,
    without_ipywidgets: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert choose_auto() == "text"
    first = make_view("auto", 3, limiter=limiter)
    second = make_view("auto", 3, limiter=limiter)
    assert isinstance(first, TqdmView) and isinstance(second, TqdmView)
    first.close(finished(limiter))
    second.close(finished(limiter))

    err = capsys.readouterr().err
    assert err.count(WIDGETS_MISSING) == 1
    assert WIDGETS_MISSING == (
        "ipywidgets is not installed; showing text progress. "
        "pip install ipywidgets for the live panel."
    )
    assert "3/3" in err


def test_explicit_panel_without_ipywidgets_falls_back_too(
    limiter: Limiter,
    in_notebook: None,
    without_ipywidgets: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = make_view("panel", 3, limiter=limiter)
    assert isinstance(view, TqdmView)
    view.close(finished(limiter))
    assert capsys.readouterr().err.count(WIDGETS_MISSING) == 1


def test_a_panel_that_cannot_be_built_does_not_cost_the_job(
    limiter: Limiter,
    in_notebook: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from deluge_nb import _panel

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no comm")

    monkeypatch.setattr(_panel, "Panel", broken)
    view = make_view("auto", 3, limiter=limiter)
    assert isinstance(view, TqdmView)
    view.close(finished(limiter))
    assert "progress panel failed" in caplog.text


def test_explicit_rich_without_rich_is_tqdm(
    limiter: Limiter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    view = make_view("rich", 3, limiter=limiter)
    assert isinstance(view, TqdmView)
    view.close(finished(limiter))
    assert "pip install rich" in caplog.text


def test_explicit_tqdm_in_a_notebook_without_ipywidgets_is_plain_text(
    limiter: Limiter,
    in_notebook: None,
    without_ipywidgets: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # tqdm.auto would warn and fall back on its own; the warning is noise.
    view = make_view("tqdm", 3)
    assert isinstance(view, TqdmView)
    view.close(finished(limiter))
    assert "3/3" in capsys.readouterr().err


def test_k04_a_job_completes_with_text_progress(
    sim: object,
    in_notebook: None,
    without_ipywidgets: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    df = pd.DataFrame({"text": ["one", "two", "three"]})
    out = df.deluge.complete("sim-progress", prompt=ECHO, progress="auto", cache=False)

    assert out["response"].tolist() == ["one", "two", "three"]
    err = capsys.readouterr().err
    assert err.count(WIDGETS_MISSING) == 1
    assert "3/3" in err


# -- detecting a kernel -------------------------------------------------------


def _fake_ipython(
    monkeypatch: pytest.MonkeyPatch, shell: object | None, kernel_module: bool
) -> None:
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", module)
    if kernel_module:
        monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    else:
        monkeypatch.delitem(sys.modules, "ipykernel", raising=False)


def test_in_kernel_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    class ZMQInteractiveShell:
        kernel = object()

    class Shell:  # Colab's subclass of the kernel's shell
        kernel = object()

    class TerminalInteractiveShell:
        pass

    _fake_ipython(monkeypatch, ZMQInteractiveShell(), kernel_module=True)
    assert in_kernel()
    _fake_ipython(monkeypatch, Shell(), kernel_module=True)
    assert in_kernel()
    _fake_ipython(monkeypatch, TerminalInteractiveShell(), kernel_module=False)
    assert not in_kernel()
    _fake_ipython(monkeypatch, None, kernel_module=True)
    assert not in_kernel()
    monkeypatch.delitem(sys.modules, "IPython")
    assert not in_kernel()


def test_import_needs_neither_ipywidgets_nor_rich() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["ipywidgets"] = None
        sys.modules["rich"] = None
        import deluge_nb
        from deluge_nb import _progress
        assert _progress.choose_auto() == "manual"
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_loads_no_ui_library() -> None:
    script = (
        "import sys, deluge_nb; "
        "print([m for m in ('ipywidgets', 'rich', 'IPython') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- text views ---------------------------------------------------------------


def test_rich_view_shows_rows_rates_and_cost(limiter: Limiter) -> None:
    from rich.console import Console

    buffer = io.StringIO()
    view = RichView(3, console=Console(file=buffer, width=140, force_terminal=False))
    view.update(JobStats(total=3, limiter=limiter).snapshot())
    view.close(finished(limiter, retries=1))

    text = buffer.getvalue()
    assert "deluge" in text
    assert "3/3" in text
    assert "req/min" in text and "tok/min" in text
    assert "$0.0042" in text
    assert "done in" in text


def test_rich_view_says_when_cooling_down(limiter: Limiter) -> None:
    stats = JobStats(total=3, limiter=limiter)
    limiter.pause(8, "429")
    assert "cooling down" in RichView._status(stats.snapshot())


def test_manual_view_writes_one_line_per_update(limiter: Limiter) -> None:
    buffer = io.StringIO()
    view = ManualView(stream=buffer)
    view.update(JobStats(total=3, limiter=limiter).snapshot())
    view.close(finished(limiter))

    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[deluge] 0/3 rows")
    assert lines[1].startswith("[deluge] 3/3 rows")
    assert "$0.0042" in lines[1]


def test_manual_view_says_a_finished_state_once(limiter: Limiter) -> None:
    buffer = io.StringIO()
    view = ManualView(stream=buffer)
    view.update(finished(limiter))  # the first refresh saw the job done
    view.close(finished(limiter))
    assert len(buffer.getvalue().splitlines()) == 1


def test_the_text_line_says_paused(limiter: Limiter) -> None:
    stats = JobStats(total=3, limiter=limiter)
    stats.state = "paused"
    assert stats.snapshot().line().endswith("| paused")


def test_plain_tqdm_view_writes_text(limiter: Limiter) -> None:
    buffer = io.StringIO()
    view = TqdmView(3, plain=True, stream=buffer)
    view.close(finished(limiter))
    assert "3/3" in buffer.getvalue() and "req/min" in buffer.getvalue()


# -- driving views ------------------------------------------------------------


async def test_drive_refreshes_on_its_interval_and_survives_a_broken_view(
    limiter: Limiter,
) -> None:
    import asyncio

    class Broken(RecordingView):
        def update(self, snap: StatsSnapshot) -> None:
            super().update(snap)
            raise RuntimeError("widget gone")

    view = Broken()
    task = asyncio.ensure_future(drive(view, JobStats(total=3, limiter=limiter)))
    await asyncio.sleep(0.22)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 3 <= len(view.updates) <= 6

    class BrokenClose(RecordingView):
        def close(self, snap: StatsSnapshot) -> None:
            raise RuntimeError("comm closed")

    close_quietly(BrokenClose(), JobStats(total=3, limiter=limiter))


def test_progress_appears_within_a_second_and_is_closed_on_success(
    sim: object,
) -> None:
    view = RecordingView()
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    started = time.monotonic()
    job = df.deluge.submit("sim-progress", prompt=ECHO, progress=view, cache=False)
    job.result(timeout=30)

    assert view.updates and view.updates[0][0] - started < 1.0
    assert [s.state for s in view.closed] == ["done"]
    assert view.closed[0].done == 3


def test_progress_is_closed_when_the_job_is_stopped(sim: object) -> None:
    view = RecordingView()
    df = pd.DataFrame({"text": [f"row {i}" for i in range(5)]})
    job = df.deluge.submit(
        "sim-progress",
        prompt="[[sim:sleep=2]]" + ECHO,
        progress=view,
        cache=False,
    )
    time.sleep(0.5)
    job.cancel()
    job.result(timeout=10)

    assert [s.state for s in view.closed] == ["stopped"]
    assert view.closed[0].limiter.in_flight == 0


def test_progress_is_closed_when_the_job_fails(sim: object) -> None:
    view = RecordingView()
    df = pd.DataFrame({"text": ["bad"]})
    with pytest.raises(Exception, match="400"):
        df.deluge.complete(
            "sim-progress",
            prompt="[[sim:status=400]]{text}",
            progress=view,
            errors="raise",
            cache=False,
        )
    assert len(view.closed) == 1
    assert view.closed[0].state == "failed"


def test_views_are_refreshed_from_one_engine_thread(sim: object) -> None:
    threads: set[str] = set()

    class ThreadView(RecordingView):
        def update(self, snap: StatsSnapshot) -> None:
            threads.add(threading.current_thread().name)

    df = pd.DataFrame({"text": ["a", "b"]})
    df.deluge.complete("sim-progress", prompt=ECHO, progress=ThreadView(), cache=False)
    assert threads == {"deluge-engine"}
