"""A trial's MLflow run held by a child process, so the trial process never imports MLflow.

``robustsweep run`` is one trial per process. Importing MLflow and opening
its store cost about 1.3 s there, all of it single-threaded Python, as is
the trial's own start (importing torch and torchattacks, reading the data).
A thread cannot overlap the two (the GIL), a second process can: the CLI
starts this child before it imports torch, the child pays MLflow's start-up
on another core, and by the time the trial opens its run the client is
ready (bench/results-cpu.md has the measurement).

Every call is synchronous: the trial sends ``(method, args, kwargs)`` over a
socket pair, the child calls the same method of a real
:class:`~robustsweep.tracking.TrialRun` and sends back its result or its
exception, so an error surfaces where it did in-process, and a file given to
``log_artifact`` is logged before the call returns. The child ignores
Ctrl-C (which reaches the whole process group), so the trial can still mark
its run FAILED; if the trial process dies without closing, the child marks
the run FAILED itself instead of leaving it RUNNING.

Ray Tune trials keep the in-process :class:`TrialRun`: Ray reuses their
worker processes, so MLflow's start-up is paid once per worker there.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Mapping

from .errors import TrackingError

#: The TrialRun methods a trial may call through the child.
METHODS = frozenset({"log_params", "log_metrics", "set_tags", "logged_steps", "log_datasets", "log_artifact",
                     "finish", "fail"})


class TrackingProcess:
    """The child process; use as a context manager, and open the trial's run with :meth:`open_run`."""

    def __init__(self, uri: str):
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, uri, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL)
        self._connection = Connection(ours.detach())
        self.uri = uri

    @property
    def pid(self) -> int:
        return self._process.pid

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            self._connection.send((method, args, kwargs))
            status, value = self._connection.recv()
        except (EOFError, OSError):
            code = self._process.wait()
            raise TrackingError(
                f"The process that logs this trial to MLflow ({self.uri}) ended unexpectedly (exit code {code}); "
                "its error output is above. Check that the tracking store is reachable and writable, and that "
                "MLflow imports in this environment (python -c 'import mlflow')."
            ) from None
        if status == "error":
            raise value
        return value

    def open_run(self, uri: str, experiment: str, run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, run_name: str | None = None) -> "RemoteTrialRun":
        """Create or reopen the run, as :class:`TrialRun` does; ``uri`` must be the one the process serves."""
        if uri != self.uri:
            raise ValueError(f"this tracking process serves {self.uri}, not {uri}")
        info = self.call("open", experiment, run_id=run_id, tags=_strings(tags or {}), run_name=run_name)
        return RemoteTrialRun(self, **info)

    def close(self) -> None:
        """Let the child exit; a run opened and never finished or failed is marked FAILED first."""
        if self._process.poll() is None:
            try:
                self._connection.send(("close", (), {}))
                self._connection.recv()
            except (EOFError, OSError):
                pass
        self._connection.close()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "TrackingProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RemoteTrialRun:
    """:class:`~robustsweep.tracking.TrialRun`'s interface, each call carried out by the child."""

    def __init__(self, process: TrackingProcess, run_id: str, experiment_id: str, resumed: bool):
        self._process = process
        self.uri = process.uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.resumed = resumed

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._process.call("log_params", _strings(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._process.call("log_metrics", {k: float(v) for k, v in metrics.items()}, int(step))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._process.call("set_tags", _strings(tags))

    def logged_steps(self, key: str) -> set[int]:
        return self._process.call("logged_steps", key)

    def log_datasets(self, datasets: Mapping[str, tuple[str, str, str]]) -> None:
        self._process.call("log_datasets", {k: tuple(map(str, v)) for k, v in datasets.items()})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._process.call("log_artifact", str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self._process.call("finish", status)

    def fail(self, error: BaseException) -> None:
        """Mark the run FAILED with the error text; never raises (the original error matters more)."""
        try:
            self._process.call("fail", _sendable(error))
        except Exception:
            pass


def _strings(values: Mapping[str, Any]) -> dict[str, str]:
    """Values as plain str, as TrialRun logs them anyway: a str subclass such as torch.__version__
    (a TorchVersion) would make the child import torch to unpickle it, a second's work."""
    return {str(k): str(v) for k, v in values.items()}


def _sendable(error: BaseException) -> BaseException:
    """``error`` itself if it survives pickling, else a RuntimeError with its type and text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _warm_up(uri: str) -> None:
    """MLflow's imports, and an existing SQLite store opened (MLflow keeps it for the run's client).

    A store that does not exist yet is left for the first request to create: the trial may still
    fail on its data, and must then leave nothing behind.
    """
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (half of MLflow's start-up)

        if Path(uri[len("sqlite:///"):]).is_file():
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def serve(uri: str, connection: Connection) -> None:
    """The child's loop: one TrialRun, its methods called on request, until "close" or end of input."""
    from .tracking import TrialRun

    try:
        _warm_up(uri)
    except Exception:
        pass  # opening the run makes the same calls again and reports what fails, to the trial
    run: TrialRun | None = None
    finished = False
    while True:
        try:
            method, args, kwargs = connection.recv()
        except (EOFError, OSError):  # the trial process died
            if run is not None and not finished:
                run.fail(RuntimeError("the trial process ended before it finished its MLflow run"))
            return
        if method == "close":
            if run is not None and not finished:
                run.fail(RuntimeError("the trial closed its MLflow logging before it finished its run"))
            connection.send(("ok", None))
            return
        try:
            if method == "open" and run is None:
                run = TrialRun(uri, *args, **kwargs)
                value: Any = {"run_id": run.run_id, "experiment_id": run.experiment_id, "resumed": run.resumed}
            elif method not in METHODS or run is None:
                raise ValueError(f"tracking process: {method!r} is not a call it takes now")
            else:
                value = getattr(run, method)(*args, **kwargs)
                finished = finished or method in ("finish", "fail")
            reply = ("ok", value)
        except Exception as exc:
            reply = ("error", _sendable(exc))
        connection.send(reply)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trial handles Ctrl-C and then closes its run here
    serve(sys.argv[1], Connection(int(sys.argv[2])))
    # Every call above committed its writes before replying. Skip the interpreter's teardown of MLflow,
    # SQLAlchemy and pandas (0.6 s measured), which the trial would otherwise wait for.
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(0)
