"""Ray's side of a sweep: the trainable (one trial, checkpointed every epoch), Ray's start, the Tuner,
reading Ray's saved state, and the guard that stops a sweep cleanly while ``fit`` runs.

Each Ray trial runs :func:`robustsweep.trial.run_trial`, reports every epoch and checkpoints the trial's
whole state there (model, optimizer/variant, RNG, epoch, MLflow run id). A retried trial
(``FailureConfig``) or a restored sweep continues from that checkpoint into the same MLflow run. A trial
that never reached a checkpoint finds its own run again by its tags (sweep, trial id), and a trial whose
run already FINISHED is not trained again: one MLflow run per trial, whatever happens to the driver.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from .errors import UserError
from .preflight import check_resources
from .results import SweepResult, _row
from .runs import _existing_run, sweep_parent_id
from .saved_sweep import DEFAULT_STORAGE, SavedSweep
from .search import PLANNED_EPOCHS
from .storage import storage_file
from .sweep import SweepSpec, Trial
from .tracking import TrialRun, check_server, patience_s
from .worker_exit import exit_quietly_on_sigterm

T = TypeVar("T")

STATE_FILE = "trial_state.pt"


# ---------------------------------------------------------------------------------------------
# the Ray trainable


def _flags_tag(flags: str) -> dict[str, str]:
    """The command-line flags that changed the sweep file, as the run's ``sweep_flags`` tag."""
    return {"sweep_flags": flags} if flags else {}


def _parent_tag(parent_id: str | None) -> dict[str, str]:
    """The tag that nests a trial's run under its sweep's parent run (robustsweep.sweep_run)."""
    from .sweep_run import PARENT_TAG

    return {PARENT_TAG: parent_id} if parent_id else {}


def _report_finished(run) -> None:
    from ray import tune

    metrics = {k: v for k, v in run.data.metrics.items()}
    tune.report({**metrics, "outcome": run.data.tags.get("outcome", "finished"), "run_id": run.info.run_id,
                 "already_finished": 1})


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


def _print_flush(message: str) -> None:
    print(message, flush=True)  # a Ray trial's output reaches the driver's console


def _unreadable(exc: BaseException) -> bool:
    """A checkpoint cut short or emptied (full disk, killed writer): torch.load's errors for such files."""
    import zipfile

    return isinstance(exc, (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile))


def read_resume_state(filesystem, folder: str, newest: str | None) -> tuple[dict[str, Any] | None, str]:
    """(the trial state to continue from, what happened when that was not the newest checkpoint).

    ``newest``: the checkpoint Ray gives the trial (None: look in ``folder``, a trial's folder of
    ``checkpoint_*``). When it cannot be read, the other checkpoints next to it are tried, newest first;
    when none can, the trial starts afresh (into its MLflow run). A checkpoint that is not tensors and
    plain values is still an error (see :func:`read_checkpoint_state`), never skipped.
    """
    import io
    import pickle

    import torch
    from pyarrow import fs

    def load(checkpoint: str) -> dict[str, Any]:
        with filesystem.open_input_stream(f"{checkpoint}/{STATE_FILE}") as stream:
            raw = stream.read()
        try:
            return torch.load(io.BytesIO(raw), weights_only=True)
        except pickle.UnpicklingError:
            raise _tampered(checkpoint) from None

    problems = []
    if newest is not None:
        try:
            return load(newest), ""
        except UserError:
            raise
        except Exception as exc:
            if not _unreadable(exc):
                raise
            problems.append(f"{newest.rsplit('/', 1)[-1]}/{STATE_FILE} is unreadable ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else 'empty'})")
        folder = newest.rsplit("/", 1)[0]
    entries = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
    candidates = sorted((e for e in entries if e.type == fs.FileType.Directory and e.base_name.startswith("checkpoint_")
                         and e.path != newest), key=lambda e: (e.mtime_ns or 0, e.base_name), reverse=True)
    for entry in candidates:
        try:
            state = load(entry.path)
        except UserError:
            raise
        except Exception as exc:
            if not _unreadable(exc):
                raise
            problems.append(f"{entry.base_name}/{STATE_FILE} is unreadable ({type(exc).__name__})")
            continue
        if newest is None and not problems:
            return state, ""  # Ray's state was lost; the trial's own newest checkpoint is fine
        return state, f"{'; '.join(problems)}: continued from {entry.base_name} (epoch {state.get('epoch')})"
    if problems:
        return None, f"{'; '.join(problems)}: no readable checkpoint, started afresh into the same MLflow run"
    return None, ""


def _tampered(checkpoint: str) -> UserError:
    return UserError(f"The checkpoint {checkpoint}/{STATE_FILE} cannot be read as tensors and plain values. It was "
                    "not written by robustsweep, or was tampered with: remove the trial's folder under "
                    "storage_path to start it afresh.")


def param_trial_id(params: dict[str, Any]) -> str:
    """The trial id in a Tune trial's config: ours (``trial_id``), a full trial dict (``trial``), as the
    Tuner states saved by robustsweep before issue 23 hold them, or a search's sample (``sample``: its id
    comes from its settings, :func:`trial_of`)."""
    if "sample" in params:
        return trial_of(params).trial_id
    return params["trial_id"] if "trial_id" in params else params["trial"]["trial_id"]


#: experiment_dir -> (size and mtime of its saved sweep, trial id -> the trial's saved JSON): a worker that
#: runs trial after trial (reuse_actors) reads the saved sweep once.
_SAVED_TRIALS: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
#: the key of the saved sweep's search in _SAVED_TRIALS (not a trial id: ids have no spaces)
_SEARCH = " search"


class TrialInterrupted(SystemExit):
    """Ray Tune ended a trial of a sweep without a scheduler at an epoch's report: the sweep is stopping. The
    trial's run ends FAILED with this text (never FINISHED), and the worker exits as Tune meant (code 0)."""

    def __init__(self, epoch: int):
        super().__init__(0)
        self.epoch = epoch

    def __str__(self) -> str:
        return (f"the sweep stopped while this trial ran (after its epoch {self.epoch}): `robustsweep resume` "
                f"continues it from that epoch's checkpoint")


def _scheduled(params: dict[str, Any]) -> bool:
    """Whether the trial is a search's, under a scheduler (ASHA) that may stop it early."""
    if "sample" not in params or not params.get("experiment_dir"):
        return False
    search = _SAVED_TRIALS.get(params["experiment_dir"], (None, {}))[1].get(_SEARCH)
    return search is not None and search.scheduler is not None


def trial_of(params: dict[str, Any]) -> Trial:
    """The trial a Tune config names: read from the saved sweep (``<experiment_dir>/robustsweep-sweep.json``)
    by its id, built from a search's sample (``sample``) and the saved search's template, or, in a Tuner state
    saved before issue 23, from the full trial dict Tune carried."""
    if "trial" in params:
        return Trial.from_json(params["trial"])
    from .saved_sweep import SWEEP_FILE
    from .search import Search

    folder = params["experiment_dir"]
    filesystem, path = storage_file(folder, SWEEP_FILE)
    info = filesystem.get_file_info(path)
    stamp = (info.size or 0, info.mtime_ns or 0)
    cached = _SAVED_TRIALS.get(folder)
    if cached is None or cached[0] != stamp:
        with filesystem.open_input_stream(path) as stream:
            data = json.loads(stream.read())
        trials = {t["trial_id"]: t for t in data["trials"]}
        if data.get("search"):
            trials[_SEARCH] = Search.from_json(data["search"])
        cached = _SAVED_TRIALS[folder] = (stamp, trials)
    if "sample" in params:
        if _SEARCH not in cached[1]:
            raise UserError(f"The saved sweep {path} has no search, but Ray's state holds a searched trial: the "
                            "sweep was launched again as a grid under the same name. Launch it again.")
        return cached[1][_SEARCH].trial(params["sample"])
    trial_id = params["trial_id"]
    if trial_id not in cached[1]:
        raise UserError(f"Trial {trial_id} is not in the saved sweep {path}: the sweep was launched again with "
                        f"other trials under the same name. Launch it again to run its current trials.")
    return Trial.from_json(cached[1][trial_id])


def ray_trainable(params: dict[str, Any]) -> None:
    """Ray Tune function trainable: one sweep trial, reporting and checkpointing every epoch."""
    import ray
    import torch
    from ray import tune

    from .trial import PRUNED, TrialStopped, _reached, run_trial

    exit_quietly_on_sigterm()  # this worker process: Ray's SIGTERM never prints a traceback to the driver
    try:
        trial = trial_of(params)
    except UserError as exc:  # a sample the search's space allows but the settings' own checks refuse
        tune.report({"outcome": "failed", "error": str(exc)})
        return
    sweep = params["sweep"]
    config = trial.config
    # MLflow is the record of what finished: a trial can finish there just before the driver dies, with
    # Ray's experiment state still saying "running" and a checkpoint to restore. Never train it again.
    # A server that does not answer is waited for (patience_s), then this attempt fails, and Ray retries it:
    # never a user error, which would end the trial for good.
    patience = patience_s()
    earlier = _existing_run(config.mlflow_tracking_uri, config.mlflow_experiment, sweep, trial.trial_id, patience)
    if earlier is not None and earlier.info.status == "FINISHED":
        _report_finished(earlier)
        return
    run_id = earlier.info.run_id if earlier is not None else None  # an attempt that died before a checkpoint
    # Ray's checkpoint, or (a sweep restarted over lost Ray state) the trial's own folder of checkpoints;
    # an unreadable newest one falls back to the newest readable one, or to a fresh start into the same run.
    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint is not None:
            resume_state, fallback = read_resume_state(checkpoint.filesystem, checkpoint.path, checkpoint.path)
        elif params.get("experiment_dir"):
            resume_state, fallback = read_resume_state(*storage_file(params["experiment_dir"], trial.trial_id), None)
            if resume_state is not None and resume_state.get("run_id") != run_id:
                resume_state, fallback = None, ""  # a checkpoint of a run this MLflow store does not have
        else:
            resume_state, fallback = None, ""
    except UserError as exc:  # a tampered checkpoint: fails the same way on every retry
        if run_id is not None:
            TrialRun(config.mlflow_tracking_uri, config.mlflow_experiment, run_id=run_id, patience=patience).fail(exc)
        tune.report({"outcome": "failed", "error": str(exc)})
        return
    if fallback:
        _print_flush(f"robustsweep: {trial.trial_id}: {fallback}")
    scheduled = _scheduled(params)

    def on_epoch_end(epoch: int, metrics, state: Callable[[], dict[str, Any]]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            # A temporary name, then a rename: a full disk never leaves a checkpoint cut short under its name.
            torch.save(state(), Path(folder) / f"{STATE_FILE}.partial")
            os.replace(Path(folder) / f"{STATE_FILE}.partial", Path(folder) / STATE_FILE)
            try:
                # the epoch training ends at: the last, or this one where it reached stop_train_acc
                planned = epoch if _reached(config, metrics["train_acc"]) else config.epochs
                tune.report({**metrics, "epoch": epoch, PLANNED_EPOCHS: planned},
                            checkpoint=tune.Checkpoint.from_directory(folder))
            except SystemExit as exc:
                # Tune's function session ends a trial with SystemExit(0) from its report when it stops the trial:
                # its scheduler's decision (ASHA: pruned, not failed), or the sweep stopping (Ctrl-C, SIGTERM,
                # the guard). A sweep without a scheduler has only the second: the trial was interrupted, and
                # its run must not end FINISHED, or `resume` would never continue it.
                if exc.code not in (0, None):
                    raise
                if scheduled:
                    raise TrialStopped() from None
                raise TrialInterrupted(epoch) from None

    tags = {"sweep": sweep, "trial_id": trial.trial_id, "group": trial.group, "mode": "ray",
            "ray_node_id": ray.get_runtime_context().get_node_id(), **_flags_tag(params.get("flags", "")),
            **({"checkpoint_fallback": fallback} if fallback else {}),
            **_parent_tag(sweep_parent_id(config.mlflow_tracking_uri, config.mlflow_experiment, sweep, patience))}
    try:
        outcome = run_trial(config, resume_state=resume_state, run_id=run_id, on_epoch_end=on_epoch_end,
                            tags=tags, run_name=trial.run_name,
                            open_run=lambda *a, **k: TrialRun(*a, patience=patience, log=_print_flush, **k))
    except UserError as exc:
        # A problem with the input (missing data, bad setting, out of memory) fails the same way on every
        # retry: end the trial once, as failed, with the message for the launch summary.
        tune.report({"outcome": "failed", "error": str(exc)})
        return
    if outcome.status == PRUNED:
        # Tune's stop, passed on: a trainable that returned would be reported once more by Tune's wrapper, and
        # that report would wait forever on the session Tune has ended (the worker is then never reused).
        raise SystemExit(0)
    tune.report({**outcome.metrics, "epoch": outcome.epochs_run, "outcome": outcome.status,
                 "run_id": outcome.run_id})




def _ray_address(address: str | None) -> str:
    """The Ray to run on: the given address, else RAY_ADDRESS when set, else "local", a new local Ray of
    our own (Ray's own default, None, would attach to whatever `ray start` last ran on this machine)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


#: The trial processes' environment. TUNE_FUNCTION_THREAD_TIMEOUT_S: how long a reused worker waits for its
#: previous trial to end (Tune's default, 2 s, can be shorter than a pruned trial's last MLflow calls on a
#: busy machine: the worker is then not reused, and Tune fails the next trial given to it).
_WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "30"}


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
                 log_to_driver=True, configure_logging=True, logging_level="WARNING",
                 runtime_env={"env_vars": _WORKER_ENV})
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        reason = str(exc).splitlines()[0][:300].rstrip(".") if str(exc) else type(exc).__name__
        raise UserError(f"Cannot attach to the Ray cluster at {address!r}: {reason}. On the "
                        "head node use --address auto after `ray up cluster/gpu.yaml`, or leave --address out for a "
                        "local Ray runtime. The cluster files' Ray takes only drivers with its token: source "
                        "~/robustsweep-secrets/env on the head first (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH; "
                        f"here RAY_AUTH_MODE is {mode}).") from None


class _HeldLogs(logging.Filter):
    """Holds the records Ray's driver-side loggers emit while attached; :meth:`release` logs them as they
    would have been, :meth:`drop` forgets them (their Ray was shut down before the user saw anything of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self.attached: list[logging.Filterer] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.held.append(record)
        return False

    def __enter__(self) -> "_HeldLogs":
        import ray  # noqa: F401 (its modules' loggers exist from here on)

        # a logger's filter acts on the records made on that logger, a handler's on every record it gets:
        # Ray's loggers, and the handlers of its top logger (which its modules' records propagate to)
        names = [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]
        self.attached = [logging.getLogger(n) for n in names] + list(logging.getLogger("ray").handlers)
        for target in self.attached:
            target.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for target in self.attached:
            target.removeFilter(self)

    def release(self) -> None:
        for record in self.held:
            logging.getLogger(record.name).handle(record)
        self.held.clear()

    def drop(self) -> None:
        self.held.clear()


def beside_ray_start(address: str | None, work: Callable[[], T], needs_ray: Callable[[T], bool]) -> T:
    """``work()`` (a launch's read of what is left to run and its data check) in a thread while this thread
    starts Ray: a local Ray takes seconds to start its processes, mostly waiting, and ``ray.init`` must run
    in the main thread (Ray installs signal handlers there). Returns what ``work`` returned. When ``work``
    fails, or ``needs_ray`` says its value leaves nothing for Ray to do, Ray is shut down again with nothing
    of its start printed (a bad dataset reads as the one paragraph it always was); otherwise Ray's own
    messages of the start are printed once ``work`` has ended."""
    import threading

    import ray

    ours = not ray.is_initialized()  # a Ray the caller had started stays up whatever happens here
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the main thread, raised there
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="robustsweep-plan", daemon=True)
    held = _HeldLogs()
    thread.start()
    try:
        with held:
            _init_ray(address)
    finally:
        thread.join()
    if "error" in outcome or not needs_ray(outcome["value"]):
        held.drop()
        if ours:
            _shut_down_ray()
        if "error" in outcome:
            raise outcome["error"]
    else:
        held.release()
    return outcome["value"]


def _shut_down_ray() -> None:
    import ray

    ray.shutdown()


def _trainable_with_resources(trials: list[Trial] = (), search_resources=None):
    """The trainable with each trial's resources: ``trials``' (by id), a search's sample's
    (``search_resources``, settled for the cluster), or a legacy config's own trial dict."""
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    by_id = {t.trial_id: {"CPU": t.resources.cpu, "GPU": t.resources.gpu} for t in trials}
    sampled = None if search_resources is None else {"CPU": search_resources.cpu, "GPU": search_resources.gpu}

    def resources(params: dict[str, Any]) -> PlacementGroupFactory:
        if "sample" in params:
            return PlacementGroupFactory([sampled])
        if "trial" in params:
            r = params["trial"]["resources"]
            return PlacementGroupFactory([{"CPU": r["cpu"], "GPU": r["gpu"]}])
        return PlacementGroupFactory([by_id[params["trial_id"]]])

    return tune.with_resources(ray_trainable, resources=resources)


def _trial_name(trial) -> str:
    try:
        return param_trial_id(trial.config)
    except (UserError, ValueError, KeyError, TypeError):  # a sample its settings refuse: the trainable says why
        return f"invalid-sample-{trial.trial_id}"


def _new_tuner(spec: "SweepSpec | SavedSweep", trials: list[Trial], verbose: int, total: int):
    """A Tuner over ``trials`` (those left to run of the sweep's ``total``: its progress line counts the others
    done). Tune sees only their ids: each trial's configuration is
    read from the saved sweep by the trainable (:func:`trial_of`). The ids are handed to Tune as
    ``points_to_evaluate``, one per sample, not as a ``grid_search``: Tune expands a grid eagerly, deep-copying
    the whole parameter space for every variant (quadratic in the number of trials: 71 s before the first of
    1,440 trials, issue 23), while a point costs a copy of a parameter space that holds no list."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    search = BasicVariantGenerator(points_to_evaluate=[{"trial_id": t.trial_id} for t in trials],
                                   max_concurrent=spec.max_concurrent or 0)
    return tune.Tuner(
        _trainable_with_resources(trials),
        # trial_id: {} is a placeholder each point replaces (a plain value would make Tune warn that the point
        # differs from it); experiment_dir: where the trainable finds the saved sweep, and a trial its own
        # checkpoints when Ray's state of them is lost
        param_space={"trial_id": {}, "sweep": spec.name, "flags": spec.flags, "experiment_dir": spec.experiment_dir},
        tune_config=_tune_config(search, len(trials)),
        run_config=_run_config(spec.name, spec.storage_path, spec.max_failures, verbose, total,
                               finished_before=total - len(trials)),
    )


def _new_search_tuner(spec: "SweepSpec | SavedSweep", search, samples: int, verbose: int,
                      points: list[dict[str, Any]] = (), told: list = (), settled=None):
    """A Tuner that samples ``samples`` trials of ``search`` (robustsweep.search.Search): Optuna's TPE or random
    search over the trial settings, ASHA when asked. ``points``: samples to run first; ``told``: trials that
    finished before (see search.make_searcher), which the progress line counts among the search's num_samples.
    ``settled``: the search's resources for this cluster."""
    from ray import tune

    from .search import make_scheduler, make_searcher
    from .tune_extensions import PrunedRuns, SearchProgress

    _relax_metric_check()
    searcher = make_searcher(search, spec.max_concurrent or 0, list(points), list(told))
    space = {"sweep": spec.name, "flags": spec.flags, "experiment_dir": spec.experiment_dir}
    if search.algorithm == "random":  # the variant generator samples the param space itself
        space["sample"] = search.tune_space()
    config = _tune_config(searcher, samples)
    scheduler = make_scheduler(search)
    if scheduler is not None:
        config.scheduler = scheduler
    return tune.Tuner(
        _trainable_with_resources((), settled or search.resources), param_space=space, tune_config=config,
        run_config=_run_config(spec.name, spec.storage_path, spec.max_failures, verbose, samples + len(told),
                               [PrunedRuns(), SearchProgress(spec.tracking_uri, spec.experiment, spec.name, search)],
                               finished_before=len(told)))


def _relax_metric_check() -> None:
    """A search's objectives exist only in a trial's last report, not in its epochs': Tune's check that every
    report carries the searcher's metric would fail every epoch (robustsweep's searcher ignores epochs)."""
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"


def _ray_state_problem(experiment_dir: str) -> str | None:
    """What makes Ray's saved experiment state unreadable (a file emptied or cut short by a full disk or a
    kill), checked before Tuner.restore, which would crash on it; None when it reads. Only JSON is parsed."""
    from pyarrow import fs

    filesystem, root = storage_file(experiment_dir)
    entries = {e.base_name: e for e in filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))}
    if "tuner.pkl" in entries and entries["tuner.pkl"].size == 0:
        return "tuner.pkl is empty"
    # A grid's Tuner writes the variant generator's state; a search's, the search generator's and its searcher's
    # (OptunaSearch's study, or a random search's variant generator).
    for prefix, suffix in (("experiment_state-", ".json"), ("basic-variant-state-", ".json"),
                           ("search_gen_state-", ".json"), ("searcher-state-", ".pkl")):
        names = sorted(n for n in entries if n.startswith(prefix) and n.endswith(suffix))
        if not names:
            continue
        try:
            with filesystem.open_input_stream(entries[names[-1]].path) as stream:
                raw = stream.read()
            if prefix == "experiment_state-":
                for trial_json, _ in json.loads(raw)["trial_data"]:
                    config = json.loads(trial_json)["config"]
                    if "sample" in config:  # a search's trial: its sample, its id from its settings
                        if not isinstance(config["sample"], dict):
                            raise TypeError("a searched trial's sample is not a mapping")
                    else:
                        param_trial_id(config)
            elif not (raw[:1] == b"\x80" and raw.endswith(b".")):
                # Tune pickles these states (under a .json name, some of them): a pickle begins with its
                # protocol opcode and ends with STOP; one emptied or cut short does not. (It is never unpickled.)
                raise ValueError("not a whole pickle" if raw else "empty, 0 bytes")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return f"{names[-1]} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'empty'})"
    return None


def _set_aside_ray_state(experiment_dir: str) -> list[str]:
    """Rename Ray's experiment-level state files (not the trials' checkpoints) out of a new run's way."""
    from pyarrow import fs

    filesystem, root = storage_file(experiment_dir)
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for entry in filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True)):
        if entry.type == fs.FileType.File and (entry.base_name == "tuner.pkl" or entry.base_name.startswith(
                ("experiment_state-", "basic-variant-state-", "search_gen_state-", "searcher-state-"))):
            filesystem.move(entry.path, f"{entry.path}.unreadable-{stamp}")
            moved.append(entry.base_name)
    return moved


def _tune_config(search_alg, samples: int):
    from ray import tune

    # reuse_actors: a worker process runs trial after trial instead of importing torch and mlflow anew
    # for each (bench/: about 9 s of overhead per trial on a 2-core CPU without it). num_samples: one per point
    # of the search (more would sample the placeholder); the search holds max_concurrent.
    return tune.TuneConfig(search_alg=search_alg, num_samples=samples, trial_name_creator=_trial_name,
                           trial_dirname_creator=_trial_name, reuse_actors=True)


def _run_config(name: str, storage_path: str, max_failures: int, verbose: int, total: int, callbacks=(),
                finished_before: int = 0):
    from ray import tune

    from .tune_extensions import Progress

    callbacks = [Progress(total, finished_before), *callbacks]
    # A concise live table: trial id, state, epoch and the learning-curve numbers.
    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", "train_loss": "loss", "test_acc": "test acc", "clean_acc": "clean acc",
                        "outcome": "outcome"},
        parameter_columns=["sweep"], max_report_frequency=15, print_intermediate_tables=True,
    )
    return tune.RunConfig(
        name=name, storage_path=storage_path, verbose=verbose, progress_reporter=reporter,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2), callbacks=callbacks,
    )




def _collect(grid, trials: list[Trial], name: str, experiment_dir: str, scheduled: bool = False) -> SweepResult:
    """One result row per Tune trial. ``scheduled``: a search with a scheduler, whose trials that ended after an
    epoch's report, without error, were stopped by it (pruned)."""
    by_id = {t.trial_id: t for t in trials}
    rows = []
    for result in grid:
        try:
            if "sample" in (result.config or {}):
                trial = trial_of(result.config)
                by_id.setdefault(trial.trial_id, trial)
            trial_id = param_trial_id(result.config or {})
        except (KeyError, TypeError, ValueError, UserError):
            trial_id = "?"
        metrics = result.metrics or {}
        if result.error is not None:
            outcome = "failed"
        elif metrics.get("outcome"):
            outcome = metrics["outcome"]
        else:
            outcome = "pruned" if scheduled and "epoch" in metrics else "unfinished"
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


class _Guard:
    """While ``tuner.fit()`` runs: stop the sweep the way Ctrl-C does (Ray Tune saves its state, trials keep
    their checkpoints, ``resume`` continues them) on SIGTERM, when the MLflow server has not answered for the
    trials' patience, or when the storage disk has less than ``min_free_bytes`` left. ``raise_if_stopped``
    then turns the cause into one message: SweepInterrupted (exit 143) or a UserError (exit 2)."""

    def __init__(self, name: str, storage_path: str, tracking_uri: str, log: Callable[[str], None]):
        self.name, self.storage_path, self.uri, self.log = name, storage_path, tracking_uri, log
        self.reason: str | None = None
        self.message = ""

    def _resume_command(self) -> str:
        default = str(Path(DEFAULT_STORAGE).resolve())
        where = "" if self.storage_path == default else f" --storage-path {self.storage_path}"
        return f"robustsweep resume {self.name}{where}"

    def _stop(self, reason: str, message: str = "") -> None:
        """Ctrl-C's path: Ray Tune's SIGINT handler (a graceful stop) while fit runs, else KeyboardInterrupt."""
        import _thread

        if self.reason is None:
            self.reason, self.message = reason, message
            _thread.interrupt_main()

    def _on_sigterm(self, signum, frame) -> None:
        self._stop("sigterm")

    def _watch(self) -> None:
        import time

        from .preflight import free_bytes, min_free_bytes
        from .tracking import TrackingError

        patience = patience_s()
        http = self.uri.startswith(("http://", "https://"))
        down_since = None
        while not self._done.wait(min(5.0, max(patience / 3, 0.5))):
            free = free_bytes(self.storage_path)
            if free is not None and free < min_free_bytes():
                self._stop("disk", (
                    f"The sweep's storage_path {self.storage_path} has {free / 2**20:.0f} MB free, less than "
                    f"{min_free_bytes() / 2**20:.0f} MB (ROBUSTSWEEP_MIN_FREE_MB): the sweep stopped before the disk "
                    f"filled; finished trials stay finished and the others keep their checkpoints. Free space "
                    f"on that disk, then `{self._resume_command()}`."))
                return
            if not http:
                continue
            try:
                check_server(self.uri, timeout=5)
                if down_since is not None:
                    self.log(f"robustsweep: the MLflow server at {self.uri} answers again "
                             f"(after {time.monotonic() - down_since:.0f} s)")
                down_since = None
            except TrackingError:
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    self.log(f"robustsweep: the MLflow server at {self.uri} does not answer: the trials wait for "
                             f"it; the sweep stops if it is still down in {patience / 60:.1f} minutes")
                elif now - down_since >= patience:
                    self._stop("mlflow", (
                        f"The MLflow tracking server at {self.uri} did not answer for {patience / 60:.1f} minutes "
                        f"(ROBUSTSWEEP_MLFLOW_PATIENCE_S), so the sweep stopped; finished trials stay finished and "
                        f"the others keep their checkpoints. Start the server (or reopen the SSH tunnel to it), "
                        f"then `{self._resume_command()}`."))
                    return

    def __enter__(self) -> "_Guard":
        import signal
        import threading

        self._done = threading.Event()
        self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)  # also keeps Ray's C++ dump away
        self._thread = threading.Thread(target=self._watch, name="robustsweep-guard", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        import signal

        self._done.set()
        signal.signal(signal.SIGTERM, self._old_sigterm)
        if exc_type is KeyboardInterrupt and self.reason is not None:
            self.raise_if_stopped()  # stopped before Tune took over Ctrl-C: the same message
        if exc is not None and _disk_full(exc):
            raise UserError(f"The sweep's storage ran out of space ({str(exc).splitlines()[0]}): the sweep stopped; "
                            f"finished trials stay finished, and a trial whose latest checkpoint was cut short "
                            f"continues from its newest readable one. Free space on the disk of "
                            f"{self.storage_path}, then `{self._resume_command()}`.") from None
        return False

    def raise_if_stopped(self) -> None:
        from .errors import SweepInterrupted

        if self.reason == "sigterm":
            raise SweepInterrupted(f"interrupted: {self._resume_command()}")
        if self.reason is not None:
            raise UserError(self.message)


def _disk_full(exc: BaseException) -> bool:
    import errno

    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)

