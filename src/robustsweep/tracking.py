"""MLflow logging from inside a trial, by run id, so retries and restores reuse one run.

A trial opens its run once and keeps the run id in its checkpoints; a retried
or restored trial reopens that run instead of creating another (DESIGN.md:
the driver-side ``MLflowLoggerCallback`` loses its trial-to-run map on
restore). Relative SQLite paths are made absolute here, because Ray runs each
trial in its own working directory.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from .errors import TrackingError, TrackingUnavailable

T = TypeVar("T")

#: MLflow limits a tag value to 8000 characters (we keep error text well below).
_MAX_TAG = 4000


def normalize_tracking_uri(uri: str, base: str | os.PathLike | None = None) -> str:
    """Make a relative ``sqlite:///file.db`` or a bare folder path absolute (relative to ``base`` or cwd)."""
    base = Path(base or os.getcwd())
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not path.startswith("/"):
            return "sqlite:///" + str((base / path).resolve())
        return uri
    if "://" not in uri:
        return (base / uri).resolve().as_uri()
    return uri


def filter_value(value: str) -> str:
    """``value`` as a quoted string literal for an MLflow search filter.

    MLflow's filter grammar has no escape character: a value is quoted with whichever quote it does
    not contain; one holding both kinds cannot be searched for, and is refused.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise TrackingError(f"The value {value!r} holds both kinds of quote, so no MLflow search filter can name it. "
                        "Rename it without quotes.")


def artifact_root_for(uri: str) -> str | None:
    """Artifact location next to a SQLite store (None = let the server or store decide)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Fail fast with a clear message when an HTTP tracking server does not answer or refuses us.

    It calls a real API endpoint (search experiments), addressed exactly as the trials address it:
    ``/health`` answers even where MLflow 3's Host-header check refuses every API call.
    """
    if not uri.startswith(("http://", "https://")):
        return
    headers = {"Content-Type": "application/json"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:  # as MLflow's own client sends them (a server run with --app-name basic-auth)
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                                     data=json.dumps({"max_results": 1}).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            reply.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:300]
        host = urllib.parse.urlsplit(uri).netloc
        if exc.code == 403 and "Host header" in body:
            raise TrackingError(
                f"The MLflow tracking server at {uri} refuses requests addressed to {host!r} (HTTP 403, "
                f"{body.strip()}): MLflow 3 servers accept only the host names they are told. Start the "
                f"server with --allowed-hosts listing {host.split(':')[0]!r} (cluster/gpu.yaml does), or "
                "reach it as localhost through an SSH tunnel."
            ) from None
        if exc.code in (401, 403):
            raise TrackingError(
                f"The MLflow tracking server at {uri} refuses this client (HTTP {exc.code}: {body.strip()[:200]}): it "
                "asks for a login. Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of "
                "the server (on a cluster, on every node, as the cluster file does), or check that they are right."
            ) from None
        raise TrackingError(
            f"The MLflow tracking server at {uri} answers HTTP {exc.code} to an API call ({body.strip()}). "
            "Check that the address is an MLflow tracking server and that it accepts this client."
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"The MLflow tracking server at {uri} does not answer ({getattr(exc, 'reason', exc)}). "
            "Start it (mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db), "
            "open the SSH tunnel to the cluster's head node, or set mlflow_tracking_uri to a local store "
            "such as sqlite:///mlflow.db."
        ) from None


#: How long a trial waits for an MLflow server that does not answer, in seconds, before its attempt fails
#: (ROBUSTSWEEP_MLFLOW_PATIENCE_S; 10 minutes by default); the driver stops the sweep after as long.
DEFAULT_PATIENCE_S = 600.0


def patience_s() -> float:
    try:
        return max(float(os.environ.get("ROBUSTSWEEP_MLFLOW_PATIENCE_S", DEFAULT_PATIENCE_S)), 0.0)
    except ValueError:
        return DEFAULT_PATIENCE_S


#: Text of the errors MLflow's HTTP client raises when the server is down or unreachable (after its own
#: retries): connection refused or reset, timeouts, a proxy's 502/503/504.
_UNAVAILABLE = ("does not answer", "Max retries exceeded", "Connection refused", "ConnectionError",
                "Connection aborted", "RemoteDisconnected", "timed out", "timeout exception",
                "too many 502", "too many 503", "too many 504")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking server cannot be reached (as opposed to refusing a request)."""
    if isinstance(exc, TrackingUnavailable):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return any(marker in text for marker in _UNAVAILABLE)


def wait_for_server(uri: str, patience: float, log: Callable[[str], None] = print) -> None:
    """``check_server``, retried with bounded backoff (1 s doubling to 30 s) while the server does not answer,
    for ``patience`` seconds at most, saying so; then TrackingUnavailable. A server that answers but refuses us
    (403, a wrong address) is a TrackingError at once: waiting would not help."""
    deadline = time.monotonic() + patience
    delay, waited_since = 1.0, None
    while True:
        try:
            check_server(uri)
            if waited_since is not None:
                log(f"robustsweep: the MLflow server at {uri} answers again (after {time.monotonic() - waited_since:.0f} s)")
            return
        except TrackingError as exc:
            if not is_unavailable(exc):
                raise
            now = time.monotonic()
            if waited_since is None:
                waited_since = now
                log(f"robustsweep: the MLflow server at {uri} does not answer; this trial waits for it, retrying "
                    f"for up to {patience / 60:.1f} minutes")
            if now >= deadline:
                raise TrackingUnavailable(
                    f"The MLflow tracking server at {uri} did not answer for {patience / 60:.1f} minutes "
                    f"(ROBUSTSWEEP_MLFLOW_PATIENCE_S): this attempt of the trial ends; Ray retries it, and once "
                    f"the server is back `robustsweep resume` continues it from its checkpoint.") from None
            time.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, 30.0)


def _retry_locked(fn: Callable[..., T]) -> Callable[..., T]:
    """Retry a store call while SQLite reports a lock held by another trial process."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        delay = 0.05
        for attempt in range(12):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # MlflowException wrapping sqlalchemy OperationalError
                if "database is locked" not in str(exc) or attempt == 11:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    return wrapper


#: Rows of each index that SQLite's ANALYZE samples (``PRAGMA analysis_limit``): its cost stays bounded, about
#: a tenth of a second, however large the store.
ANALYSIS_LIMIT = 1000


def analyze_sqlite(uri: str) -> None:
    """Give a SQLite store's query planner statistics: ``PRAGMA analysis_limit=1000; ANALYZE``, SQLite's own
    maintenance statement on the file (it samples each index and writes only the sqlite_stat1 table; MLflow's
    tables are neither read nor changed by us). Without statistics SQLite answers MLflow's metric-history
    queries from the metrics table's primary-key index, which begins with the metric key, so each query reads
    that key's rows of every run (issue 23: 1 ms a query at 1,440 runs, 4.5 ms at 7,200); with them, from
    index_metrics_run_uuid_key_step (0.035 ms). Done where a store is made or filled: launch, resume and
    import. Other stores (PostgreSQL analyzes by itself), a missing file or a locked one: nothing."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if not path.is_file():
        return
    import contextlib
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
            db.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
            db.execute("ANALYZE")
            db.commit()
    except sqlite3.Error:
        pass  # statistics are an optimization: a store that is busy or read-only works without them


def git_commit() -> str:
    """The source checkout's commit, or $ROBUSTSWEEP_GIT_SHA (set in the container image), or 'unknown'."""
    if os.environ.get("ROBUSTSWEEP_GIT_SHA"):
        return os.environ["ROBUSTSWEEP_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


#: Marks the experiment as model training for MLflow 3 (its UI's experiment-type logic reads it); the UI
#: still opens in its GenAI mode unless the page address says otherwise (see runs_page).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def runs_page(experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI page of an experiment's runs table. MLflow 3.17's UI opens in its GenAI mode
    unless told otherwise (``workflowType``), whatever the experiment's kind tag says."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_page(experiment_id: str, run_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI page of one run (a sweep's parent shows its trials nested under it), in the
    model-training view (see runs_page)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def get_or_create_experiment(client, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if any(experiment.tags.get(k) != v for k, v in EXPERIMENT_KIND.items()):
            for key, value in EXPERIMENT_KIND.items():  # experiments made before the tag existed
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root_for(uri), tags=EXPERIMENT_KIND)
    except Exception:
        # Another process created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def make_client(uri: str, patience: float | None = None, log: Callable[[str], None] = print, *,
                read_only: bool = False):
    """An MlflowClient for ``uri``; an unreachable server or unusable store raises TrackingError.

    ``patience`` (inside a trial): wait that many seconds for a server that does not answer, then raise
    TrackingUnavailable (see :func:`wait_for_server`); None fails fast, as the driver's checks do.
    ``read_only``: for commands that only read (report, export, audit, status), a SQLite store that
    does not exist is an error instead of a new, empty store left behind (MLflow creates the file).
    """
    from mlflow.tracking import MlflowClient

    if read_only and uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise TrackingError(f"There is no MLflow store at {path} ({uri}), so there are no runs to read. Give "
                                "the store the sweep logged to (--tracking-uri sqlite:///path/to/mlflow.db), or "
                                "run the command from the folder the sweep was launched in.")
    if patience is None:
        check_server(uri)
    else:
        wait_for_server(uri, patience, log)
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:
        raise TrackingError(
            f"Cannot open the MLflow tracking store {uri}: {exc}. Check mlflow_tracking_uri "
            "(a writable sqlite:///path.db, or the http:// address of a running mlflow server)."
        ) from None


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


#: Tags that list every value a run was given, comma-separated, instead of keeping the last: the Ray node
#: of each attempt (a retry may run elsewhere).
LIST_TAGS = ("ray_node_id",)


def _keep_every_node(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    out = dict(new)
    for key in LIST_TAGS:
        if key in new and old.get(key):
            values = old[key].split(",")
            out[key] = ",".join(values if new[key] in values else [*values, new[key]])
    return out


class TrialRun:
    """One MLflow run, created or reopened by id.

    ``patience`` (seconds; inside a trial): a server that does not answer, when the run is opened or at any
    later call, is waited for that long (saying so through ``log``), then the call is made again; past that,
    TrackingUnavailable, which Ray retries. None (the default): fail at once, as the driver does.
    """

    def __init__(self, uri: str, experiment: str, run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, run_name: str | None = None,
                 patience: float | None = None, log: Callable[[str], None] = print):
        self.uri = uri
        self.patience = patience
        self.log = log
        self.client = make_client(uri, patience, log)
        try:
            self.experiment_id = self._call(get_or_create_experiment, self.client, experiment, uri)
            self._tags: dict[str, str] = {}
            if run_id is None:
                run = self._call(self.client.create_run, self.experiment_id, tags=dict(tags or {}), run_name=run_name)
                self.run_id = run.info.run_id
                self.resumed = False
            else:
                self.run_id = run_id
                self._tags = dict(self._call(self.client.get_run, run_id).data.tags)
                previous = self._tags.get("error")
                self._call(self.client.update_run, run_id, status="RUNNING")
                if previous:
                    # A retry of a failed attempt: keep the old error for the record, off the live tag.
                    self.set_tags({"previous_error": previous})
                    self._call(self.client.delete_tag, run_id, "error")
                if tags:
                    self.set_tags(_keep_every_node(self._tags, tags))
                self.resumed = True
        except (TrackingError, TrackingUnavailable):
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise TrackingUnavailable(f"The MLflow tracking server at {uri} cannot be reached: "
                                          f"{str(exc).splitlines()[0]}") from None
            raise TrackingError(
                f"Cannot write to the MLflow tracking store {uri} (experiment {experiment!r}): {exc}. "
                "Check that the store is writable and the server is up."
            ) from None

    def _call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)``, retried while SQLite is locked and, with a patience, while the server is down."""
        while True:
            try:
                return _retry_locked(fn)(*args, **kwargs)
            except Exception as exc:
                if self.patience is None or not is_unavailable(exc):
                    raise
                self.log(f"robustsweep: MLflow call {getattr(fn, '__name__', 'call')} failed: {str(exc).splitlines()[0][:200]}")
                wait_for_server(self.uri, self.patience, self.log)  # TrackingUnavailable when it stays down

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self._call(self.client.log_batch, self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self._call(self.client.log_batch, self.run_id, metrics=items[start:start + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:_MAX_TAG]) for k, v in tags.items()]
        self._call(self.client.log_batch, self.run_id, tags=items)

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which ``key`` is already logged in this run (empty for a new run)."""
        if not self.resumed:
            return set()
        return {m.step for m in self._call(self.client.get_metric_history, self.run_id, key)}

    def log_datasets(self, datasets: Mapping[str, tuple[str, str, str]]) -> None:
        """Record the data a run used as MLflow run inputs (the UI's Dataset column), those it lacks.

        ``datasets``: context ("training", "evaluation") -> (name, digest, source folder). Safe when trials
        start together in a fresh experiment: each inserts the experiment's dataset rows if missing, and the
        loser of that race gets a unique-constraint error; the row then exists, so logging again links it.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        run = self._call(self.client.get_run, self.run_id)
        have = {(i.dataset.name, i.dataset.digest) for i in (run.inputs.dataset_inputs if run.inputs else [])}
        inputs = [DatasetInput(Dataset(name=name, digest=digest, source_type="local", source=source),
                               tags=[InputTag("mlflow.data.context", context)])
                  for context, (name, digest, source) in datasets.items() if (name, digest) not in have]
        for attempt in range(3):
            if not inputs:
                return
            try:
                self._call(self.client.log_inputs, self.run_id, datasets=inputs)
                return
            except Exception as exc:
                text = str(exc)
                if attempt == 2 or not ("UNIQUE constraint failed" in text or "Duplicate entry" in text
                                        or "duplicate key value" in text):  # SQLite, MySQL, PostgreSQL
                    raise

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self._call(self.client.set_terminated, self.run_id, status=status)

    def fail(self, error: BaseException) -> None:
        """Mark the run FAILED with the error text; never raises (the original error matters more)."""
        patience, self.patience = self.patience, None  # no waiting for a server that is down here
        # retryable: whether Ray tries the trial again (not after a problem with the input); failed_attempts:
        # how many attempts failed so far. `status` counts a retryable failure with attempts left as running.
        from .errors import UserError

        final = isinstance(error, UserError) or type(error).__name__ == "OutOfMemoryError"
        attempts = _int(self._tags.get("failed_attempts")) + 1
        self._tags["failed_attempts"] = str(attempts)
        try:
            self.set_tags({"error": f"{type(error).__name__}: {error}", "outcome": "failed",
                           "retryable": "0" if final else "1", "failed_attempts": str(attempts)})
            self.finish("FAILED")
        except Exception:
            pass
        finally:
            self.patience = patience
