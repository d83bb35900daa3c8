"""Run a sweep on Ray Tune (or in-process with ``debug``), resume it, and report its status.

Each Ray trial runs :func:`robustsweep.trial.run_trial`, reports every epoch
and checkpoints the trial's whole state there (model, optimizer/variant, RNG,
epoch, MLflow run id). A retried trial (``FailureConfig``) or a restored sweep
continues from that checkpoint into the same MLflow run. A trial that never
reached a checkpoint finds its own run again by its tags (sweep, trial id),
and a trial whose run already FINISHED is not trained again: one MLflow run
per trial, whatever happens to the driver.

The expanded sweep is saved next to Ray's experiment state
(``<storage_path>/<name>/robustsweep-sweep.json``), so ``resume NAME`` and
``status NAME`` need only the sweep's name.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .preflight import check_data, check_resources, check_storage
from .storage import driver_record, driver_state, storage_file
from .sweep import SAFE_NAME, SweepSpec, Trial, load_sweep
from .tracking import check_server, filter_value, get_or_create_experiment, make_client

SWEEP_FILE = "robustsweep-sweep.json"
STATE_FILE = "trial_state.pt"
DEFAULT_STORAGE = "ray_results"


# ---------------------------------------------------------------------------------------------
# MLflow bookkeeping shared by the trainable, resume and status


def trial_runs(client, experiment_id: str, sweep: str) -> dict[str, list[Any]]:
    """MLflow runs of a sweep, grouped by trial id (newest first)."""
    runs: dict[str, list[Any]] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.sweep = {filter_value(sweep)}",
                                  max_results=1000, order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            runs.setdefault(run.data.tags.get("trial_id", ""), []).append(run)
        token = page.token
        if not token:
            return runs


def trial_state(runs: list[Any]) -> tuple[str, Any]:
    """A trial's state from its MLflow runs (newest first), with the run that decides it:
    ("finished", its newest FINISHED run), ("pending", None), ("running", the newest run: RUNNING) or
    ("failed", the newest run: FAILED or KILLED). Shared by status, audit, export and the report."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        return "finished", finished[0]
    if not runs:
        return "pending", None
    return ("running" if runs[0].info.status == "RUNNING" else "failed"), runs[0]


def _existing_run(uri: str, experiment: str, sweep: str, trial_id: str):
    """This trial's MLflow run from an earlier attempt, preferring a FINISHED one."""
    client = make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id],
                              filter_string=(f"tags.sweep = {filter_value(sweep)} and "
                                             f"tags.trial_id = {filter_value(trial_id)}"),
                              order_by=["attributes.start_time DESC"])
    return trial_state(runs)[1]


# ---------------------------------------------------------------------------------------------
# the Ray trainable


def _flags_tag(flags: str) -> dict[str, str]:
    """The command-line flags that changed the sweep file, as the run's ``sweep_flags`` tag."""
    return {"sweep_flags": flags} if flags else {}


def _report_finished(run) -> None:
    from ray import tune

    metrics = {k: v for k, v in run.data.metrics.items()}
    tune.report({**metrics, "outcome": run.data.tags.get("outcome", "finished"), "run_id": run.info.run_id})


def read_checkpoint_state(folder: str | os.PathLike) -> dict[str, Any]:
    """A trial's checkpointed state, read as tensors and plain containers only (``weights_only``):
    whoever can write the storage cannot make a trial run code by planting a pickle there."""
    import pickle

    import torch

    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"The checkpoint {path} cannot be read as tensors and plain values "
                        f"({str(exc).splitlines()[0]}). It was not written by robustsweep, or was tampered "
                        "with: remove the trial's folder under storage_path to start it afresh.") from None


def ray_trainable(params: dict[str, Any]) -> None:
    """Ray Tune function trainable: one sweep trial, reporting and checkpointing every epoch."""
    import ray
    import torch
    from ray import tune

    from .trial import run_trial

    trial = Trial.from_json(params["trial"])
    sweep = params["sweep"]
    config = trial.config
    # MLflow is the record of what finished: a trial can finish there just before the driver dies, with
    # Ray's experiment state still saying "running" and a checkpoint to restore. Never train it again.
    earlier = _existing_run(config.mlflow_tracking_uri, config.mlflow_experiment, sweep, trial.trial_id)
    if earlier is not None and earlier.info.status == "FINISHED":
        _report_finished(earlier)
        return
    resume_state = None
    run_id = earlier.info.run_id if earlier is not None else None  # an attempt that died before a checkpoint
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_state = read_checkpoint_state(folder)

    def on_epoch_end(epoch: int, metrics, state: Callable[[], dict[str, Any]]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state(), Path(folder) / STATE_FILE)
            tune.report({**metrics, "epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))

    tags = {"sweep": sweep, "trial_id": trial.trial_id, "group": trial.group, "mode": "ray",
            "ray_node_id": ray.get_runtime_context().get_node_id(), **_flags_tag(params.get("flags", ""))}
    try:
        outcome = run_trial(config, resume_state=resume_state, run_id=run_id, on_epoch_end=on_epoch_end,
                            tags=tags, run_name=trial.trial_id)
    except UserError as exc:
        # A problem with the input (missing data, bad setting, out of memory) fails the same way on every
        # retry: end the trial once, as failed, with the message for the launch summary.
        tune.report({"outcome": "failed", "error": str(exc)})
        return
    tune.report({**outcome.metrics, "epoch": outcome.epochs_run, "outcome": outcome.status,
                 "run_id": outcome.run_id})


# ---------------------------------------------------------------------------------------------
# launch / resume


def _prepare_tracking(spec: SweepSpec) -> None:
    """Create the store and experiment on the driver, so trial processes never race to migrate it."""
    client = make_client(spec.tracking_uri)  # fails fast, with the fix, when a server does not answer
    try:
        get_or_create_experiment(client, spec.experiment, spec.tracking_uri)
    except Exception as exc:
        from .errors import TrackingError

        raise TrackingError(f"Cannot create MLflow experiment {spec.experiment!r} in {spec.tracking_uri}: {exc}. "
                            "Check that the store is writable and the server is up.") from None


def _save_spec(spec: SweepSpec) -> None:
    """Write the expanded sweep next to Ray's experiment state (local folder or cloud storage).

    Written to a temporary name, then renamed: an interrupted launch leaves the old file or none,
    never a truncated one.
    """
    text = json.dumps(spec_to_json(spec), indent=1).encode()
    filesystem, path = storage_file(spec.storage_path, spec.name, SWEEP_FILE)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    partial = f"{path}.{os.getpid()}.partial"
    with filesystem.open_output_stream(partial) as out:
        out.write(text)
    filesystem.move(partial, path)


def spec_to_json(spec: SweepSpec) -> dict[str, Any]:
    return {"name": spec.name, "source": spec.source, "storage_path": spec.storage_path,
            "tracking_uri": spec.tracking_uri, "experiment": spec.experiment, "max_concurrent": spec.max_concurrent,
            "max_failures": spec.max_failures, "flags": spec.flags, "trials": [t.to_json() for t in spec.trials]}


@dataclass
class SavedSweep:
    """What ``resume`` and ``status`` read back: the expanded sweep saved at launch."""

    name: str
    storage_path: str
    tracking_uri: str
    experiment: str
    max_concurrent: int
    max_failures: int
    trials: list[Trial]
    flags: str = ""

    @property
    def experiment_dir(self) -> str:
        return self.storage_path.rstrip("/") + "/" + self.name


def load_saved_sweep(name: str, storage_path: str | None = None) -> SavedSweep:
    if not SAFE_NAME.fullmatch(name):
        raise UserError(f"{name!r} is not a sweep name: sweep names are letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit (the `name:` key of the sweep file).")
    storage = storage_path or DEFAULT_STORAGE
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    try:
        filesystem, path = storage_file(storage, name, SWEEP_FILE)
        with filesystem.open_input_stream(path) as stream:
            raw = stream.read()
    except (FileNotFoundError, OSError) as exc:
        raise UserError(
            f"No sweep named {name!r} under {storage} ({name}/{SWEEP_FILE} cannot be read: "
            f"{str(exc).splitlines()[0]}). Give the storage path the sweep was launched with (--storage-path), "
            f"or launch it first with `robustsweep launch SWEEP.yaml`."
        ) from None
    try:
        data = json.loads(raw)
        return SavedSweep(data["name"], data["storage_path"], data["tracking_uri"], data["experiment"],
                          data["max_concurrent"], data["max_failures"],
                          [Trial.from_json(t) for t in data["trials"]], data.get("flags", ""))
    except (ValueError, KeyError, TypeError, UserError) as exc:
        raise UserError(
            f"The saved sweep {storage}/{name}/{SWEEP_FILE} is unreadable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'incomplete'}; {len(raw)} bytes). `launch` writes it; "
            f"launch the sweep file again with the same name and storage: trials already FINISHED in MLflow are "
            f"not trained twice."
        ) from None


def resolve_sweep(sweep: str, tracking_uri: str | None = None,
                  storage_path: str | None = None) -> tuple[str, str, str, list[Trial]]:
    """(name, tracking uri, experiment, trials) of a sweep file, or of a launched sweep given by name."""
    if sweep.endswith((".yaml", ".yml")) or Path(sweep).is_file():
        spec = load_sweep(sweep)
        return spec.name, tracking_uri or spec.tracking_uri, spec.experiment, list(spec.trials)
    saved = load_saved_sweep(sweep, storage_path)
    return saved.name, tracking_uri or saved.tracking_uri, saved.experiment, saved.trials


def _ray_address(address: str | None) -> str:
    """The Ray to run on: the given address, else RAY_ADDRESS when set, else "local", a new local Ray of
    our own (Ray's own default, None, would attach to whatever `ray start` last ran on this machine)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def _init_ray(address: str | None) -> None:
    import ray

    # Ray's newer console output ignores progress_reporter; the classic one prints our concise table.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    address = _ray_address(address)
    try:
        # The package must be importable on every node; a cluster's image installs it (docker/).
        ray.init(address=address, include_dashboard=False if address == "local" else None,
                 log_to_driver=True, configure_logging=True, logging_level="WARNING")
    except ConnectionError as exc:
        raise UserError(f"Cannot attach to the Ray cluster at {address!r}: {exc}. On the head node use "
                        "--address auto after `ray up cluster/gpu.yaml`, or leave --address out for a local "
                        "Ray runtime.") from None


def _trainable_with_resources():
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    def resources(params: dict[str, Any]) -> PlacementGroupFactory:
        r = params["trial"]["resources"]
        return PlacementGroupFactory([{"CPU": r["cpu"], "GPU": r["gpu"]}])

    return tune.with_resources(ray_trainable, resources=resources)


def _trial_name(trial) -> str:
    return trial.config["trial"]["trial_id"]


def _tune_config(max_concurrent: int):
    from ray import tune

    # reuse_actors: a worker process runs trial after trial instead of importing torch and mlflow anew
    # for each (bench/: about 9 s of overhead per trial on a 2-core CPU without it).
    return tune.TuneConfig(max_concurrent_trials=max_concurrent or None, trial_name_creator=_trial_name,
                           trial_dirname_creator=_trial_name, reuse_actors=True)


def _run_config(name: str, storage_path: str, max_failures: int, verbose: int):
    from ray import tune

    # A concise live table: trial id, state, epoch and the learning-curve numbers.
    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", "train_loss": "loss", "test_acc": "test acc", "clean_acc": "clean acc",
                        "outcome": "outcome"},
        parameter_columns=["sweep"], max_report_frequency=15, print_intermediate_tables=True,
    )
    return tune.RunConfig(
        name=name, storage_path=storage_path, verbose=verbose, progress_reporter=reporter,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )


@dataclass
class SweepResult:
    name: str
    rows: list[dict[str, Any]]
    experiment_dir: str

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["outcome"]] = out.get(row["outcome"], 0) + 1
        return out


def _row(trial_id: str, trial: Trial | None, outcome: str, run_id: str, metrics, error: str = "") -> dict[str, Any]:
    """One line of the results table printed after a sweep."""
    row: dict[str, Any] = {"trial_id": trial_id, "group": trial.group if trial else "?", "outcome": outcome,
                           "run_id": run_id, "error": error}
    if trial is not None:
        c = trial.config
        row.update(variant=c.variant, batch_size=c.batch_size, lr=c.effective_lr, seed=c.seed)
    row.update({k: metrics[k] for k in ("clean_acc", "hessian_top_eig") if k in metrics})
    return row


def _collect(grid, trials: list[Trial], name: str, experiment_dir: str) -> SweepResult:
    by_id = {t.trial_id: t for t in trials}
    rows = []
    for result in grid:
        trial_id = (result.config or {}).get("trial", {}).get("trial_id", "?")
        metrics = result.metrics or {}
        outcome = (metrics.get("outcome") or "unfinished") if result.error is None else "failed"
        error = _error_line(result.error) if result.error else metrics.get("error", "")
        rows.append(_row(trial_id, by_id.get(trial_id), outcome, metrics.get("run_id", ""), metrics, error))
    return SweepResult(name, rows, experiment_dir)


def _local(address: str | None) -> bool:
    """Whether trials run on this machine: a local Ray of our own."""
    return _ray_address(address) == "local"


def _launched_by_ray_up() -> bool:
    """A head node of a `ray up` cluster, whose autoscaler may add nodes (the launcher writes this file)."""
    return Path("~/ray_bootstrap_config.yaml").expanduser().is_file()


def _settle_auto_gpu(trials: list[Trial], log: Callable[[str], None]) -> list[Trial]:
    """Trials whose sweep says ``gpu: auto`` take a GPU share where the Ray cluster has GPUs, none elsewhere."""
    import dataclasses

    import ray

    if not any(t.resources.gpu_auto for t in trials):
        return trials
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    log(f"robustsweep: gpu: auto -> {'a GPU share per trial' if has_gpus else 'no GPU in this Ray cluster: CPU'}")
    return [dataclasses.replace(t, resources=t.resources.for_cluster(has_gpus)) for t in trials]


def _check_cluster_resources(trials: list[Trial], address: str | None, log: Callable[[str], None]) -> None:
    demands = [t.resources.as_dict() for t in trials]
    for warning in check_resources(demands, autoscaling=not _local(address) and _launched_by_ray_up()):
        log(f"robustsweep: warning: {warning}")


def _error_line(error: BaseException) -> str:
    """The line of a Ray task error that names the exception (its first line names only the Ray task)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failure|Interrupt)\b:?", line)]
    return (named or lines or [type(error).__name__])[-1]


def launch(spec: SweepSpec, *, address: str | None = None, verbose: int = 1,
           log: Callable[[str], None] = print) -> SweepResult:
    """Run every trial of ``spec`` on Ray Tune; returns one row per trial.

    Nothing is created (MLflow experiment, storage folder) until the preflight checks pass.
    """
    check_storage(spec.storage_path)
    check_server(spec.tracking_uri)
    check_data([t.config for t in spec.trials], local=_local(address))
    from ray import tune

    _init_ray(address)
    trials = _settle_auto_gpu(list(spec.trials), log)
    _check_cluster_resources(trials, address, log)
    _prepare_tracking(spec)
    _save_spec(spec)
    tuner = tune.Tuner(
        _trainable_with_resources(),
        param_space={"trial": tune.grid_search([t.to_json() for t in trials]), "sweep": spec.name,
                     "flags": spec.flags},
        tune_config=_tune_config(spec.max_concurrent),
        run_config=_run_config(spec.name, spec.storage_path, spec.max_failures, verbose),
    )
    with driver_record(spec.storage_path, spec.name):
        grid = tuner.fit()
    return _collect(grid, trials, spec.name, spec.experiment_dir)


def resume(name: str, *, storage_path: str | None = None, address: str | None = None,
           verbose: int = 1, log: Callable[[str], None] = print) -> SweepResult:
    """Restore an interrupted sweep: finished trials stay finished, the rest continue from checkpoints."""
    saved = load_saved_sweep(name, storage_path)
    check_server(saved.tracking_uri)
    check_data([t.config for t in saved.trials], local=_local(address))
    from ray import tune

    _init_ray(address)
    _check_cluster_resources(_settle_auto_gpu(saved.trials, log), address, log)
    if not tune.Tuner.can_restore(saved.experiment_dir):
        raise UserError(f"Ray has no restorable experiment state in {saved.experiment_dir} (the driver may have "
                        "died before Ray wrote it). Launch the sweep again: trials already FINISHED in MLflow "
                        "are not trained twice.")
    tuner = tune.Tuner.restore(saved.experiment_dir, trainable=_trainable_with_resources(),
                               resume_unfinished=True, resume_errored=True)
    with driver_record(saved.storage_path, name):
        grid = tuner.fit()
    return _collect(grid, saved.trials, name, saved.experiment_dir)


def run_debug(spec: SweepSpec, log: Callable[[str], None] = print) -> SweepResult:
    """The same trials, in-process one by one, without Ray (local debug mode)."""
    from .trial import run_trial

    check_server(spec.tracking_uri)
    check_data([t.config for t in spec.trials], local=True)
    _prepare_tracking(spec)
    rows = []
    for i, trial in enumerate(spec.trials, 1):
        existing = _existing_run(spec.tracking_uri, spec.experiment, spec.name, trial.trial_id)
        if existing is not None and existing.info.status == "FINISHED":
            log(f"[{i}/{len(spec.trials)}] {trial.trial_id}: already finished (MLflow run {existing.info.run_id})")
            rows.append(_row(trial.trial_id, trial, existing.data.tags.get("outcome", "finished"),
                             existing.info.run_id, existing.data.metrics))
            continue
        log(f"[{i}/{len(spec.trials)}] {trial.trial_id}")
        try:
            outcome = run_trial(trial.config, run_id=existing.info.run_id if existing else None, log=log,
                                run_name=trial.trial_id,
                                tags={"sweep": spec.name, "trial_id": trial.trial_id, "group": trial.group,
                                      "mode": "debug", **_flags_tag(spec.flags)})
            rows.append(_row(trial.trial_id, trial, outcome.status, outcome.run_id, outcome.metrics))
        except UserError:
            raise
        except Exception as exc:  # one failing trial does not lose the others
            log(f"  failed: {type(exc).__name__}: {exc}")
            rows.append(_row(trial.trial_id, trial, "failed", "", {}, f"{type(exc).__name__}: {exc}"))
    return SweepResult(spec.name, rows, "")


# ---------------------------------------------------------------------------------------------
# status


@dataclass
class SweepStatus:
    name: str
    counts: dict[str, int]
    total: int
    tracking_uri: str
    experiment: str
    experiment_dir: str
    failures: list[tuple[str, str]]
    driver: str = "gone"
    experiment_id: str | None = None


#: Trial states that `status` counts, in the order it prints them.
STATUS_KEYS = ("pending", "running", "interrupted", "finished", "collapsed", "diverged", "failed")


def status(name: str, storage_path: str | None = None) -> SweepStatus:
    """Counts of trials per state, from MLflow; a RUNNING run with no live driver counts as interrupted."""
    saved = load_saved_sweep(name, storage_path)
    client = make_client(saved.tracking_uri)
    exp = client.get_experiment_by_name(saved.experiment)
    runs = trial_runs(client, exp.experiment_id, name) if exp else {}
    driver = driver_state(saved.storage_path, name)
    counts = {k: 0 for k in STATUS_KEYS}
    failures = []
    for trial in saved.trials:
        state, run = trial_state(runs.get(trial.trial_id, []))
        if state == "finished":
            outcome = run.data.tags.get("outcome", "finished")
            counts[outcome if outcome in ("collapsed", "diverged") else "finished"] += 1
        elif state == "running":
            counts["interrupted" if driver == "gone" else "running"] += 1
        else:
            counts[state] += 1
            if state == "failed":
                failures.append((trial.trial_id, run.data.tags.get("error", run.info.status)))
    return SweepStatus(name, counts, len(saved.trials), saved.tracking_uri, saved.experiment,
                       saved.experiment_dir, failures, driver, exp.experiment_id if exp else None)
