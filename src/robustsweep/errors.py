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
