"""A Ray worker told to stop (SIGTERM) exits without a traceback in the driver's output.

Ray's worker handles SIGTERM by raising ``SystemExit`` in the main thread, wherever it is. When the
signal lands while that thread runs a weakref callback or a ``__del__`` (the garbage collector runs them
at any moment), Python cannot raise there: it prints "Exception ignored in ..." with a traceback, which
``log_to_driver`` copies into the driver's output, and the worker carries on. Ray sends that SIGTERM
routinely (a finished trial's actor, ``ray.shutdown``), so a sweep that ended well could print one.

:func:`exit_quietly_on_sigterm` hands such a swallowed exit back: the signal is delivered again a moment
later, once the callback has returned, so Ray's handler raises where it can and the worker exits as Ray
meant it to. Any other unraisable exception still goes to Python's own hook.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

#: How long to wait before delivering SIGTERM again: long enough for a callback to return.
REDELIVER_AFTER_S = 0.05


def _from_sigterm(args) -> bool:
    """Ray's SIGTERM exit: a SystemExit carrying Ray's ``ray_terminate_msg`` that names the signal."""
    exc = args.exc_value
    return isinstance(exc, SystemExit) and "SIGTERM" in str(getattr(exc, "ray_terminate_msg", ""))


@functools.lru_cache(maxsize=None)
def exit_quietly_on_sigterm() -> None:
    """Install (once per process) the hook that redelivers a SIGTERM exit swallowed by a callback."""
    previous = sys.unraisablehook

    def hook(args) -> None:
        if not _from_sigterm(args):
            previous(args)
            return
        timer = threading.Timer(REDELIVER_AFTER_S, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        try:
            timer.start()
        except RuntimeError:  # the interpreter is shutting down: no new threads, and the exit is under way
            previous(args)

    sys.unraisablehook = hook
