"""syncward: an async actor-style worker framework that never loses a record."""

from syncward.actors.downloader import Context as Context
from syncward.actors.downloader import Handler as Handler
from syncward.actors.stats_keeper import StatsSnapshot as StatsSnapshot
from syncward.actors.syncer import SyncerConfig as SyncerConfig
from syncward.clock import Clock as Clock
from syncward.clock import SystemClock as SystemClock
from syncward.errors import ConfigError as ConfigError
from syncward.errors import IllegalTransition as IllegalTransition
from syncward.errors import InvalidJob as InvalidJob
from syncward.errors import LeaseLost as LeaseLost
from syncward.errors import Permanent as Permanent
from syncward.errors import Retry as Retry
from syncward.errors import Skip as Skip
from syncward.errors import StageError as StageError
from syncward.errors import StoreLocked as StoreLocked
from syncward.errors import SupervisorGaveUp as SupervisorGaveUp
from syncward.errors import SyncwardError as SyncwardError
from syncward.jobs import Job as Job
from syncward.jobs import JobSpec as JobSpec
from syncward.jobs import JobState as JobState
from syncward.jobs import job_key as job_key
from syncward.jobs import op_key as op_key
from syncward.limits import Limit as Limit
from syncward.messages import CancelResult as CancelResult
from syncward.messages import SubmitResult as SubmitResult
from syncward.retry import RetryPolicy as RetryPolicy
from syncward.runtime import Runtime as Runtime
from syncward.schedules import Schedule as Schedule
from syncward.stage_order import stages as stages
from syncward.supervisor import RestartIntensity as RestartIntensity

__all__ = [
    "CancelResult",
    "Clock",
    "ConfigError",
    "Context",
    "Handler",
    "IllegalTransition",
    "InvalidJob",
    "Job",
    "JobSpec",
    "JobState",
    "LeaseLost",
    "Limit",
    "Permanent",
    "RestartIntensity",
    "Retry",
    "RetryPolicy",
    "Runtime",
    "Schedule",
    "Skip",
    "StageError",
    "StatsSnapshot",
    "StoreLocked",
    "SubmitResult",
    "SupervisorGaveUp",
    "SyncerConfig",
    "SyncwardError",
    "SystemClock",
    "job_key",
    "op_key",
    "stages",
]

__version__ = "0.1.0"
