"""The state machine: all 25 (current, target) pairs, against a table written out here.

The expected table is deliberately independent of `syncward.jobs.TRANSITIONS`: if someone
edits the code's table, this one does not follow along, and the change has to be argued.
"""

from __future__ import annotations

import pytest

from syncward.errors import IllegalTransition
from syncward.jobs import TERMINAL, JobState, check_transition

P, L, S, F, K = "planned", "leased", "succeeded", "failed", "skipped"

# (current, target, legal)
TABLE = [
    (P, P, False),
    (P, L, True),  # leased to a downloader
    (P, S, False),
    (P, F, False),
    (P, K, True),  # cancelled before it ran
    (L, P, True),  # retry, release, lost lease
    (L, L, True),  # renewal or stage report
    (L, S, True),
    (L, F, True),
    (L, K, True),
    (S, P, False),
    (S, L, False),
    (S, S, False),
    (S, F, False),
    (S, K, False),
    (F, P, True),  # a person re-queues a dead letter
    (F, L, False),
    (F, S, False),
    (F, F, False),
    (F, K, False),
    (K, P, False),
    (K, L, False),
    (K, S, False),
    (K, F, False),
    (K, K, False),
]


def test_table_is_complete() -> None:
    pairs = {(c, t) for c, t, _ in TABLE}
    assert len(TABLE) == 25
    assert pairs == {(c.value, t.value) for c in JobState for t in JobState}


@pytest.mark.parametrize(
    ("current", "target", "legal"), TABLE, ids=[f"{c}->{t}" for c, t, _ in TABLE]
)
def test_transition(current: str, target: str, legal: bool) -> None:
    cur, tgt = JobState(current), JobState(target)
    if legal:
        assert check_transition(cur, tgt) is tgt
    else:
        with pytest.raises(IllegalTransition) as info:
            check_transition(cur, tgt, job="abc123")
        assert info.value.current is cur
        assert info.value.target is tgt
        assert f"{current} -> {target}" in str(info.value)
        assert "abc123" in str(info.value)


def test_terminal_states_only_leave_by_requeue() -> None:
    assert {s.value for s in TERMINAL} == {S, F, K}
    for state in TERMINAL:
        legal = {t for t in JobState if (state.value, t.value, True) in TABLE}
        assert legal <= {JobState.PLANNED}
