"""The ipywidgets panel without a kernel: traits, sliders, buttons, refresh cost.

Widgets here talk to a recording comm instead of a frontend, so each test
can see exactly which messages a refresh would send. A frontend's slider
move or button click is played through the widget's own message handler,
the path a real one takes.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("ipywidgets")

import comm  # noqa: E402
import ipywidgets as widgets  # noqa: E402
from comm.base_comm import BaseComm  # noqa: E402

from deluge_nb import _panel  # noqa: E402
from deluge_nb._limits import Limiter  # noqa: E402
from deluge_nb._panel import (  # noqa: E402
    BAR_STYLES,
    BLOCKING_NOTE,
    Panel,
    cell_blocks_kernel,
    counters_text,
    display_state,
    fmt_cost,
    fmt_count,
    fmt_duration,
    gauge_fraction,
    ladder,
    rate_options,
    rate_text,
)
from deluge_nb._stats import JobStats, StatsSnapshot  # noqa: E402

# -- fixtures -----------------------------------------------------------------


class RecordingComm(BaseComm):
    """A comm that keeps what the kernel would send to the frontend."""

    sent: list[tuple[str, dict[str, Any]]] = []

    def publish_msg(
        self,
        msg_type: str,
        data: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: Any = None,
        **keys: Any,
    ) -> None:
        RecordingComm.sent.append((self.comm_id, dict(data or {})))


@pytest.fixture(autouse=True)
def recording_comm(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(RecordingComm, "sent", sent)
    monkeypatch.setattr(comm, "create_comm", RecordingComm)
    yield sent


class FakeControls:
    """Stands in for a Job behind the buttons."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._paused = False
        self.largest_request_tokens = 0.0

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self.calls.append("pause")
        self._paused = True

    def resume(self) -> None:
        self.calls.append("resume")
        self._paused = False

    def cancel(self) -> None:
        self.calls.append("cancel")


def snapshot(limiter: Limiter, **changes: Any) -> StatsSnapshot:
    """A snapshot of a 20-row job, with fields and limiter fields replaced."""
    snap = JobStats(total=20, limiter=limiter).snapshot()
    limiter_fields = {f.name for f in dataclasses.fields(snap.limiter)}
    lim_changes = {k: v for k, v in changes.items() if k in limiter_fields}
    job_changes = {k: v for k, v in changes.items() if k not in limiter_fields}
    return dataclasses.replace(
        snap,
        limiter=dataclasses.replace(snap.limiter, **lim_changes),
        **job_changes,
    )


def make_panel(
    limiter: Limiter | None = None,
    controls: FakeControls | None = None,
    **options: Any,
) -> Panel:
    options.setdefault("busy", None)
    return Panel(20, limiter=limiter, controls=controls, show=False, **options)


def frontend_update(widget: widgets.Widget, **state: Any) -> None:
    """What the kernel receives when a frontend changes a widget."""
    widget._handle_msg(
        {
            "content": {
                "data": {"method": "update", "state": state, "buffer_paths": []}
            },
            "buffers": [],
        }
    )


def frontend_slide(slider: widgets.SelectionSlider, value: float) -> None:
    index = [v for _, v in slider.options].index(value)
    frontend_update(slider, index=index)


def frontend_click(button: widgets.Button) -> None:
    button._handle_msg(
        {
            "content": {"data": {"method": "custom", "content": {"event": "click"}}},
            "buffers": [],
        }
    )


@pytest.fixture
def limiter() -> Limiter:
    return Limiter(600, 60_000, 8)


# -- formatting ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1.5, "1.5"),
        (412.4, "412"),
        (999.6, "1k"),
        (1500, "1.5k"),
        (60_000, "60k"),
        (12_345, "12.3k"),
        (2_400_000, "2.4M"),
        (math.inf, "no limit"),
    ],
)
def test_fmt_count(value: float, text: str) -> None:
    assert fmt_count(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "?"), (math.inf, "?"), (7.6, "8 s"), (200, "3 m 20 s"), (7500, "2 h 5 m")],
)
def test_fmt_duration(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_fmt_cost_with_and_without_a_budget() -> None:
    assert fmt_cost(0.01234) == "$0.0123"
    assert fmt_cost(12.5) == "$12.50"
    assert fmt_cost(0.25, 1.0) == "$0.2500 of $1.00 (25%)"


def test_gauge_fraction_is_quantized_and_bounded() -> None:
    assert gauge_fraction(300, 600) == 0.5
    assert gauge_fraction(301, 600) == gauge_fraction(301.5, 600)
    assert gauge_fraction(900, 600) == 1.0
    assert gauge_fraction(5, math.inf) == 0.0


def test_rate_text_names_the_setting_when_the_server_lowered_the_limit() -> None:
    assert rate_text(412, 600, 600, "req/min") == "412 / 600 req/min"
    assert rate_text(412, 500, 600, "req/min") == "412 / 500 req/min (set 600)"
    assert rate_text(412, math.inf, math.inf, "req/min") == "412 req/min (no limit)"


def test_ladder_is_log_spaced_and_holds_the_current_value() -> None:
    stops = ladder(1, 1000, 437)
    assert stops == sorted(stops)
    assert stops[0] == 1 and stops[-1] == 1000
    assert 437 in stops and 150 in stops and 700 in stops

    options = rate_options(437, 1, 100_000)
    assert options[-1] == ("no limit", math.inf)
    labels = [label for label, _ in options]
    assert len(labels) == len(set(labels))


def test_counters_show_cost_against_max_cost_when_given(limiter: Limiter) -> None:
    snap = snapshot(limiter, retries=2, rate_limited=1, failed=3, cost_usd=0.5)
    assert counters_text(snap) == ("retries 2 · 429s 1 · errors 3 · cost $0.5000")
    budgeted = dataclasses.replace(snap, max_cost_usd=2.0)
    assert counters_text(budgeted).endswith("cost $0.5000 of $2.00 (25%)")


# -- state and colours --------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "paused_for_s", "shown", "style"),
    [
        ("running", 0.0, "running", "info"),
        ("running", 8.0, "cooling down", "warning"),
        ("paused", 0.0, "paused", ""),
        ("done", 0.0, "done", "success"),
        ("failed", 0.0, "failed", "danger"),
        ("stopped", 0.0, "stopped", ""),
        ("cancelled", 0.0, "stopped", ""),
    ],
)
def test_bar_style_follows_the_state(
    limiter: Limiter, state: str, paused_for_s: float, shown: str, style: str
) -> None:
    snap = snapshot(limiter, state=state, paused_for_s=paused_for_s)
    assert display_state(snap) == shown
    assert BAR_STYLES[shown] == style

    panel = make_panel(limiter)
    panel.update(snap)
    assert {g.bar.bar_style for g in panel.gauges} == {style}
    assert shown in panel.heading.value


# -- values after update ------------------------------------------------------


def test_update_shows_rows_rates_in_flight_cost_and_pace(limiter: Limiter) -> None:
    panel = make_panel(limiter)
    panel.update(
        snapshot(
            limiter,
            done=12,
            eta_s=8.2,
            requests_last_minute=300,
            tokens_last_minute=45_000,
            in_flight=6,
            retries=1,
            rate_limited=1,
            cost_usd=0.0123,
            reason="waiting on tokens/min",
        )
    )

    assert (panel.rows.bar.value, panel.rows.bar.max) == (12, 20)
    assert panel.rows.text.value == "12 / 20 rows · ETA 8 s"
    assert panel.requests.bar.value == 0.5
    assert panel.requests.text.value == "300 / 600 req/min"
    assert panel.tokens.bar.value == 0.75
    assert panel.tokens.text.value == "45k / 60k tok/min"
    assert panel.in_flight.bar.value == 0.75
    assert panel.in_flight.text.value == "6 / 8 requests"
    assert panel.counters.value == "retries 1 · 429s 1 · errors 0 · cost $0.0123"
    assert panel.pace.value == "pace: waiting on tokens/min"


def test_cooling_down_reason_is_shown(limiter: Limiter) -> None:
    panel = make_panel(limiter)
    panel.update(snapshot(limiter, paused_for_s=8, reason="cooling down 8 s after 429"))
    assert panel.pace.value == "pace: cooling down 8 s after 429"
    assert "cooling down" in panel.heading.value


def test_paused_says_how_to_go_on(limiter: Limiter) -> None:
    panel = make_panel(limiter)
    panel.update(snapshot(limiter, state="paused", reason="idle"))
    assert panel.pace.value.startswith("pace: paused")
    assert "Resume" in panel.pace.value


def test_input_and_output_gauges_only_when_those_limits_are_finite(
    limiter: Limiter,
) -> None:
    panel = make_panel(limiter)
    panel.update(snapshot(limiter))
    assert panel.input_tokens.row.layout.display == "none"
    assert panel.output_tokens.row.layout.display == "none"

    panel.update(
        snapshot(
            limiter,
            max_input_tokens_per_minute=40_000,
            input_tokens_last_minute=10_000,
            max_output_tokens_per_minute=8_000,
            output_tokens_last_minute=2_000,
        )
    )
    assert panel.input_tokens.row.layout.display == ""
    assert panel.input_tokens.text.value == "10k / 40k tok/min"
    assert panel.output_tokens.bar.value == 0.25


def test_no_limit_hides_the_bar_but_keeps_the_count() -> None:
    unlimited = Limiter(math.inf, math.inf, 4)
    panel = make_panel(unlimited)
    panel.update(snapshot(unlimited, requests_last_minute=42))
    assert panel.requests.bar.layout.visibility == "hidden"
    assert panel.requests.text.value == "42 req/min (no limit)"
    assert panel.sliders["requests"].label == "no limit"


def test_final_state_after_close(limiter: Limiter) -> None:
    controls = FakeControls()
    panel = make_panel(limiter, controls)
    panel.close(snapshot(limiter, state="done", done=20, elapsed_s=14.2, eta_s=0.0))

    assert panel.rows.text.value == "20 / 20 rows · 14 s"
    assert panel.rows.bar.bar_style == "success"
    assert panel.pace.value == "pace: -"
    assert all(s.disabled for s in panel.sliders.values())
    assert panel.pause_button is not None and panel.pause_button.disabled
    assert panel.stop_button is not None and panel.stop_button.disabled


# -- refresh cost -------------------------------------------------------------


def test_update_sends_only_what_changed(
    limiter: Limiter, recording_comm: list[tuple[str, dict[str, Any]]]
) -> None:
    panel = make_panel(limiter, FakeControls())
    snap = snapshot(limiter, done=3, requests_last_minute=100)
    panel.update(snap)

    recording_comm.clear()
    sets = panel.trait_sets
    panel.update(snap)
    assert recording_comm == []
    assert panel.trait_sets == sets

    panel.update(dataclasses.replace(snap, done=4))
    changed = {comm_id for comm_id, _ in recording_comm}
    assert changed == {panel.rows.bar.model_id, panel.rows.text.model_id}
    assert all(msg["method"] == "update" for _, msg in recording_comm)


def test_a_rate_wobble_below_the_gauge_resolution_sends_no_bar_update(
    limiter: Limiter, recording_comm: list[tuple[str, dict[str, Any]]]
) -> None:
    panel = make_panel(limiter)
    panel.update(snapshot(limiter, requests_last_minute=300.0))
    recording_comm.clear()
    panel.update(snapshot(limiter, requests_last_minute=300.4))
    assert panel.requests.bar.model_id not in {c for c, _ in recording_comm}


# -- sliders ------------------------------------------------------------------


def test_sliders_start_at_the_limiter_settings(limiter: Limiter) -> None:
    panel = make_panel(limiter)
    assert panel.sliders["requests"].value == 600
    assert panel.sliders["tokens"].value == 60_000
    assert panel.sliders["concurrency"].value == 8
    assert all(not s.continuous_update for s in panel.sliders.values())


def test_a_setting_off_the_ladder_is_an_option() -> None:
    odd = Limiter(437, 61_234, 13)
    panel = make_panel(odd)
    assert panel.sliders["requests"].value == 437
    assert panel.sliders["tokens"].value == 61_234
    assert panel.sliders["concurrency"].value == 13


def test_moving_sliders_changes_the_live_limiter(limiter: Limiter) -> None:
    panel = make_panel(limiter)

    frontend_slide(panel.sliders["requests"], 300)
    frontend_slide(panel.sliders["tokens"], 20_000)
    frontend_slide(panel.sliders["concurrency"], 2)

    snap = limiter.snapshot()
    assert snap.configured_requests_per_minute == 300
    assert snap.max_requests_per_minute == 300
    assert snap.configured_tokens_per_minute == 20_000
    assert snap.max_concurrent_requests == 2


def test_tokens_slider_stops_at_the_jobs_largest_request(limiter: Limiter) -> None:
    controls = FakeControls()
    controls.largest_request_tokens = 1_100  # e.g. 76 prompt tokens + 1024
    panel = make_panel(limiter, controls)

    frontend_slide(panel.sliders["tokens"], 1_000)  # the lowest option
    # Below 1,100 that row could never be sent: the limit stops there and
    # the slider shows it.
    assert limiter.snapshot().configured_tokens_per_minute == 1_100
    assert panel.sliders["tokens"].value == 1_100

    frontend_slide(panel.sliders["tokens"], 2_000)
    assert limiter.snapshot().configured_tokens_per_minute == 2_000


def test_no_limit_option_lifts_the_limit(limiter: Limiter) -> None:
    panel = make_panel(limiter)
    frontend_slide(panel.sliders["requests"], math.inf)
    assert limiter.snapshot().max_requests_per_minute == math.inf


def test_update_does_not_move_a_slider_the_user_just_moved(
    limiter: Limiter,
) -> None:
    panel = make_panel(limiter)
    stale = snapshot(limiter)  # taken before the user's move reached the limiter

    frontend_slide(panel.sliders["requests"], 300)
    panel.update(stale)
    assert panel.sliders["requests"].value == 300
    assert limiter.snapshot().configured_requests_per_minute == 300


def test_update_follows_a_limit_changed_elsewhere(
    limiter: Limiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel = make_panel(limiter)
    calls: list[dict[str, Any]] = []
    original = limiter.set_limits

    def spy(**limits: Any) -> None:
        calls.append(limits)
        original(**limits)

    monkeypatch.setattr(limiter, "set_limits", spy)
    # Another cell on the same API key changes the shared limiter.
    original(max_requests_per_minute=1234, max_concurrent_requests=5)
    panel.update(snapshot(limiter, **_settings(limiter)))

    assert panel.sliders["requests"].value == 1234
    assert panel.sliders["concurrency"].value == 5
    assert calls == []  # following the limiter does not write it back


def test_a_slider_move_queued_until_after_the_job_is_not_applied(
    limiter: Limiter,
) -> None:
    panel = make_panel(limiter)
    panel.close(snapshot(limiter, state="done"))

    # A move made during a blocking cell reaches the kernel only now.
    frontend_slide(panel.sliders["requests"], 100)
    assert limiter.snapshot().configured_requests_per_minute == 600
    assert panel.sliders["requests"].value == 600


def test_no_sliders_without_a_limiter() -> None:
    panel = make_panel(None)
    assert panel.sliders == {}
    panel.update(snapshot(Limiter(60, 6000)))


# -- buttons ------------------------------------------------------------------


def test_pause_resume_and_stop_drive_the_controls(limiter: Limiter) -> None:
    controls = FakeControls()
    panel = make_panel(limiter, controls)
    assert panel.pause_button is not None and panel.stop_button is not None

    frontend_click(panel.pause_button)
    assert controls.calls == ["pause"]
    assert panel.pause_button.description == "Resume"

    frontend_click(panel.pause_button)
    assert controls.calls == ["pause", "resume"]
    assert panel.pause_button.description == "Pause"

    frontend_click(panel.stop_button)
    assert controls.calls == ["pause", "resume", "cancel"]
    assert panel.stop_button.disabled
    assert panel.stop_button.description == "Stopping…"

    panel.close(snapshot(limiter, state="stopped", done=7))
    assert panel.stop_button.description == "Stopped"
    assert panel.rows.bar.bar_style == ""


def test_the_pause_button_follows_a_pause_made_elsewhere(limiter: Limiter) -> None:
    controls = FakeControls()
    panel = make_panel(limiter, controls)
    controls.pause()  # job.pause() from a cell
    panel.update(snapshot(limiter, state="paused"))
    assert panel.pause_button is not None
    assert panel.pause_button.description == "Resume"


def test_clicks_after_the_job_ended_do_nothing(limiter: Limiter) -> None:
    controls = FakeControls()
    panel = make_panel(limiter, controls)
    panel.close(snapshot(limiter, state="done"))
    assert panel.pause_button is not None and panel.stop_button is not None

    frontend_click(panel.stop_button)
    frontend_click(panel.pause_button)
    assert controls.calls == []


def test_no_buttons_without_controls(limiter: Limiter) -> None:
    panel = make_panel(limiter)
    assert panel.pause_button is None and panel.stop_button is None


# -- the note about a blocking cell -------------------------------------------


def test_note_shows_while_a_cell_holds_the_kernel(limiter: Limiter) -> None:
    busy = [True]
    panel = make_panel(limiter, FakeControls(), busy=lambda: busy[0])
    assert "submit(" in BLOCKING_NOTE and "submit(" in panel.note.value

    panel.update(snapshot(limiter))
    assert panel.note.layout.display == "none"  # a submit() cell may be ending
    panel.update(snapshot(limiter))
    assert panel.note.layout.display == ""

    busy[0] = False
    panel.update(snapshot(limiter))
    assert panel.note.layout.display == "none"

    busy[0] = True
    panel.update(snapshot(limiter))
    panel.close(snapshot(limiter, state="done"))
    assert panel.note.layout.display == "none"


def test_no_note_when_there_is_nothing_to_press() -> None:
    panel = make_panel(None, None, busy=lambda: True)
    for _ in range(3):
        panel.update(snapshot(Limiter(60, 6000)))
    assert panel.note.layout.display == "none"


def test_cell_blocks_kernel_is_false_outside_a_kernel() -> None:
    assert cell_blocks_kernel() is False


def test_cell_blocks_kernel_sees_a_running_cell(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        seen: list[bool] = []
        shell.user_ns["check"] = lambda: seen.append(_from_thread(cell_blocks_kernel))
        shell.run_cell("check()", store_history=False)
        assert seen == [True]
        assert _from_thread(cell_blocks_kernel) is False
    finally:
        InteractiveShell.clear_instance()


# -- threads and display ------------------------------------------------------


def test_created_and_updated_from_another_thread(limiter: Limiter) -> None:
    controls = FakeControls()
    made: list[Panel] = []

    def engine() -> None:
        panel = make_panel(limiter, controls)
        panel.update(snapshot(limiter, done=5))
        made.append(panel)

    thread = threading.Thread(target=engine)
    thread.start()
    thread.join()
    (panel,) = made

    frontend_slide(panel.sliders["requests"], 200)
    assert panel.stop_button is not None
    frontend_click(panel.stop_button)
    assert limiter.snapshot().configured_requests_per_minute == 200
    assert controls.calls == ["cancel"]
    assert panel.rows.bar.value == 5


def test_panel_displays_itself_and_delegates_its_mimebundle(
    limiter: Limiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[object] = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))

    panel = Panel(20, limiter=limiter, busy=None)
    assert shown == [panel]

    bundle = panel._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == panel.box.model_id
    assert "progress panel" in bundle["text/plain"]
    assert make_panel(limiter) not in shown  # show=False


def test_refresh_rate_is_at_most_ten_a_second() -> None:
    assert _panel.PANEL_REFRESH_S >= 0.1


# -- helpers ------------------------------------------------------------------


def _settings(limiter: Limiter) -> dict[str, Any]:
    snap = limiter.snapshot()
    return {
        "configured_requests_per_minute": snap.configured_requests_per_minute,
        "max_requests_per_minute": snap.max_requests_per_minute,
        "max_concurrent_requests": snap.max_concurrent_requests,
    }


def _from_thread(check: Any) -> bool:
    """Run ``check`` on another thread, as the engine does, and return it."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(check()))
    thread.start()
    thread.join()
    return result[0]
