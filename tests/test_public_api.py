"""The public API is exactly what `__all__` says, and every name in it exists."""

from __future__ import annotations

import enum
import importlib

import pytest

import syncward

EXPECTED = {
    "syncward": {
        "CancelResult", "Clock", "ConfigError", "Context", "Handler", "IllegalTransition",
        "InvalidJob", "Job", "JobSpec", "JobState", "LeaseLost", "Limit", "Permanent",
        "RestartIntensity", "Retry", "RetryPolicy", "Runtime", "Schedule", "Skip",
        "StageError", "StatsSnapshot", "StoreLocked",
        "SubmitResult", "SupervisorGaveUp", "SyncerConfig", "SyncwardError", "SystemClock",
        "job_key", "op_key", "stages",
    },
    "syncward.supervisor": {
        "Actor", "ChildSpec", "ExitReason", "Restart", "RestartIntensity", "RestartStrategy",
        "RestartWindow", "Supervisor", "SupervisorEvent", "SupervisorStatistics",
    },
    "syncward.testing": {"FakeClock", "Faults"},
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_all_is_exactly_the_public_api(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == EXPECTED[module]
    assert list(mod.__all__) == sorted(mod.__all__)
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_errors_share_one_root() -> None:
    from syncward import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        if name == "StoreFailure":  # the kinds of a store failure, not an exception
            assert issubclass(cls, enum.Enum)
        elif name in ("HandlerSignal", "Retry", "Permanent", "Skip", "InjectedCrash"):
            assert not issubclass(cls, syncward.SyncwardError)
        else:
            assert issubclass(cls, syncward.SyncwardError), name
