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

from .errors import TrackingError

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
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                                     data=json.dumps({"max_results": 1}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
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


def make_client(uri: str):
    """An MlflowClient for ``uri``; an unreachable server or unusable store raises TrackingError."""
    from mlflow.tracking import MlflowClient

    check_server(uri)
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:
        raise TrackingError(
            f"Cannot open the MLflow tracking store {uri}: {exc}. Check mlflow_tracking_uri "
            "(a writable sqlite:///path.db, or the http:// address of a running mlflow server)."
        ) from None


class TrialRun:
    """One MLflow run, created or reopened by id."""

    def __init__(self, uri: str, experiment: str, run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, run_name: str | None = None):
        self.uri = uri
        self.client = make_client(uri)
        try:
            self.experiment_id = _retry_locked(get_or_create_experiment)(self.client, experiment, uri)
            if run_id is None:
                run = _retry_locked(self.client.create_run)(self.experiment_id, tags=dict(tags or {}),
                                                            run_name=run_name)
                self.run_id = run.info.run_id
                self.resumed = False
            else:
                self.run_id = run_id
                previous = _retry_locked(self.client.get_run)(run_id).data.tags.get("error")
                _retry_locked(self.client.update_run)(run_id, status="RUNNING")
                if previous:
                    # A retry of a failed attempt: keep the old error for the record, off the live tag.
                    self.set_tags({"previous_error": previous})
                    _retry_locked(self.client.delete_tag)(run_id, "error")
                if tags:
                    self.set_tags(tags)
                self.resumed = True
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"Cannot write to the MLflow tracking store {uri} (experiment {experiment!r}): {exc}. "
                "Check that the store is writable and the server is up."
            ) from None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            _retry_locked(self.client.log_batch)(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            _retry_locked(self.client.log_batch)(self.run_id, metrics=items[start:start + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:_MAX_TAG]) for k, v in tags.items()]
        _retry_locked(self.client.log_batch)(self.run_id, tags=items)

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which ``key`` is already logged in this run (empty for a new run)."""
        if not self.resumed:
            return set()
        return {m.step for m in _retry_locked(self.client.get_metric_history)(self.run_id, key)}

    def log_datasets(self, datasets: Mapping[str, tuple[str, str, str]]) -> None:
        """Record the data a run used as MLflow run inputs (the UI's Dataset column).

        ``datasets``: context ("training", "evaluation") -> (name, digest, source folder).
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [DatasetInput(Dataset(name=name, digest=digest, source_type="local", source=source),
                               tags=[InputTag("mlflow.data.context", context)])
                  for context, (name, digest, source) in datasets.items()]
        _retry_locked(self.client.log_inputs)(self.run_id, datasets=inputs)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        _retry_locked(self.client.log_artifact)(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        _retry_locked(self.client.set_terminated)(self.run_id, status=status)

    def fail(self, error: BaseException) -> None:
        """Mark the run FAILED with the error text; never raises (the original error matters more)."""
        try:
            self.set_tags({"error": f"{type(error).__name__}: {error}", "outcome": "failed"})
            self.finish("FAILED")
        except Exception:
            pass
