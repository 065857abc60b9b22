"""Helpers for testing syncward and the handlers users write for it."""

from syncward.testing.clock import FakeClock as FakeClock
from syncward.testing.faults import Faults as Faults

__all__ = ["FakeClock", "Faults"]
