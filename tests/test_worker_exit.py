"""A Ray worker's SIGTERM that lands inside a weakref callback still exits the worker, with no traceback
(the one that reached a driver's output in CI), through the same handler Ray's worker installs."""

import subprocess
import sys
import textwrap

WORKER = textwrap.dedent("""
    import signal, sys, time, weakref
    import ray._raylet
    from robustsweep.worker_exit import exit_quietly_on_sigterm

    def sigterm_handler(signum, frame):  # what ray._private.worker's main_loop installs
        ray._raylet.raise_sys_exit_with_custom_error_message("The process receives a SIGTERM.", exit_code=1)

    signal.signal(signal.SIGTERM, sigterm_handler)
    if sys.argv[1] == "hooked":
        exit_quietly_on_sigterm()

    class Thing:
        pass

    def collected(ref):
        signal.raise_signal(signal.SIGTERM)  # Ray's handler runs here, inside the callback

    thing = Thing()
    ref = weakref.ref(thing, collected)
    del thing
    print("after the callback", flush=True)
    time.sleep(3)
    print("still running", flush=True)
""")


def _worker(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WORKER, mode], capture_output=True, text=True, timeout=60)


def test_a_sigterm_swallowed_by_a_callback_still_ends_the_worker_quietly():
    plain = _worker("plain")  # Python's own behaviour: a traceback, and the worker carries on
    assert "Exception ignored" in plain.stderr and "Traceback" in plain.stderr
    assert "still running" in plain.stdout and plain.returncode == 0

    hooked = _worker("hooked")
    assert "after the callback" in hooked.stdout and "still running" not in hooked.stdout
    assert hooked.returncode == 1 and "Traceback" not in hooked.stderr, hooked.stderr


def test_other_unraisable_exceptions_still_reach_pythons_hook():
    code = textwrap.dedent("""
        import weakref
        from robustsweep.worker_exit import exit_quietly_on_sigterm
        exit_quietly_on_sigterm()
        class Thing:
            pass
        def collected(ref):
            raise ValueError("a real bug in a callback")
        thing = Thing()
        ref = weakref.ref(thing, collected)
        del thing
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ValueError: a real bug in a callback" in done.stderr and done.returncode == 0
