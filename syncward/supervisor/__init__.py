"""Supervision trees: child specs, restart strategies and intensity, the `Supervisor`."""

from syncward.supervisor.intensity import RestartWindow as RestartWindow
from syncward.supervisor.spec import Actor as Actor
from syncward.supervisor.spec import ChildSpec as ChildSpec
from syncward.supervisor.spec import ExitReason as ExitReason
from syncward.supervisor.spec import Restart as Restart
from syncward.supervisor.spec import RestartIntensity as RestartIntensity
from syncward.supervisor.spec import RestartStrategy as RestartStrategy
from syncward.supervisor.spec import SupervisorEvent as SupervisorEvent
from syncward.supervisor.supervisor import Supervisor as Supervisor
from syncward.supervisor.supervisor import SupervisorStatistics as SupervisorStatistics

__all__ = [
    "Actor",
    "ChildSpec",
    "ExitReason",
    "Restart",
    "RestartIntensity",
    "RestartStrategy",
    "RestartWindow",
    "Supervisor",
    "SupervisorEvent",
    "SupervisorStatistics",
]
