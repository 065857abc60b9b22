"""RestartWindow: OTP restart intensity as a pure function of timestamps (no event loop)."""

from __future__ import annotations

import pytest

from syncward.supervisor import RestartIntensity, RestartWindow


def test_allows_max_restarts_then_refuses() -> None:
    window = RestartWindow(RestartIntensity(max_restarts=3, within=10.0))
    assert [window.record(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert window.count == 3
    assert window.record(3.0) is False
    assert window.count == 4


def test_default_intensity_is_one_restart_in_five_seconds() -> None:
    window = RestartWindow(RestartIntensity())
    assert window.record(100.0) is True
    assert window.record(104.9) is False


def test_zero_restarts_refuses_the_first() -> None:
    window = RestartWindow(RestartIntensity(max_restarts=0, within=5.0))
    assert window.record(0.0) is False


def test_old_restarts_leave_the_window() -> None:
    window = RestartWindow(RestartIntensity(max_restarts=1, within=5.0))
    assert window.record(0.0) is True
    assert window.record(5.5) is True
    assert window.count == 1
    assert window.record(11.0) is True
    assert window.count == 1


def test_a_restart_exactly_within_seconds_old_still_counts() -> None:
    window = RestartWindow(RestartIntensity(max_restarts=1, within=5.0))
    assert window.record(10.0) is True
    assert window.record(15.0) is False
    assert window.count == 2


def test_window_slides_one_timestamp_at_a_time() -> None:
    window = RestartWindow(RestartIntensity(max_restarts=2, within=10.0))
    assert window.record(0.0) is True
    assert window.record(6.0) is True
    assert window.record(9.0) is False  # 0, 6 and 9 all lie inside [-1, 9]
    assert window.record(16.5) is True  # 0 and 6 are older than 6.5: 9 and 16.5 remain
    assert window.count == 2


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0.0, 1.0], [True, True]),
        ([0.0, 1.0, 2.0], [True, True, False]),
        ([0.0, 1.0, 20.0, 21.0], [True, True, True, True]),
        ([0.0, 1.0, 20.0, 21.0, 22.0], [True, True, True, True, False]),
    ],
)
def test_sequences(times: list[float], expected: list[bool]) -> None:
    window = RestartWindow(RestartIntensity(max_restarts=2, within=10.0))
    assert [window.record(t) for t in times] == expected
