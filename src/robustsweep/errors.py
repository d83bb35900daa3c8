"""User-facing errors.

Every problem a user can fix (a bad config key, a missing dataset, an
unreachable MLflow server) is raised as a :class:`UserError` whose message is
one paragraph naming the problem and the fix. The CLI prints it without a
traceback and exits with ``exit_code``.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""

    exit_code = 2


class ConfigError(UserError):
    """A trial or sweep setting is unknown, has the wrong type or an impossible value."""


class DataError(UserError):
    """A dataset cannot be found or read."""


class TrackingError(UserError):
    """The MLflow tracking store cannot be reached or written."""


class TrackingUnavailable(RuntimeError):
    """The MLflow server did not answer (refused or timed-out connections) for a trial's whole patience.

    Not a UserError: the server may be back for the next attempt, so Ray retries the trial (and
    ``resume`` continues it), where a UserError would end it for good.
    """


class SweepInterrupted(Exception):
    """The driver was told to stop (SIGTERM): Ray Tune saved the sweep's state; the message says how to resume."""

    exit_code = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended
