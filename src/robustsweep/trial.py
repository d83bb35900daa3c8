"""One trial: train one model with one optimizer configuration, measure it, log it to MLflow.

:func:`run_trial` is the single trainable used by the local debug mode
(in-process, no Ray) and by the Ray Tune launcher (which passes callbacks to
report and checkpoint every epoch, and the state of its latest checkpoint on
a retry or restore).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
import yaml

from . import metrics as keys
from .allocator import keep_freed_memory
from .attacks import clean_accuracy
from .config import TrialConfig
from .errors import UserError
from .data import DeviceBatches, DeviceData
from . import datasets, measurements
from .measurements import MeasureContext
from .models import build_model
from .tracking import TrialRun, device_name, git_commit, normalize_tracking_uri
from . import variants
from .variants import Variant


class InjectedFailure(RuntimeError):
    """Raised by the test-only ``fail_at_epoch`` switch."""


class TrialStopped(BaseException):
    """Raised by an ``on_epoch_end`` callback when the sweep's scheduler (ASHA) stopped the trial after that
    epoch's report: the run ends FINISHED with ``outcome = pruned``, no measurements, never as a failure."""


#: The outcome of a trial its scheduler stopped early (robustsweep.search.PRUNED).
PRUNED = "pruned"


@dataclass
class TrialOutcome:
    """What a trial ended with: 'finished', 'collapsed' or 'diverged', its final metrics and per-epoch history."""

    status: str
    run_id: str
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0


#: Called after every epoch with (epoch, that epoch's metrics, a function returning the checkpoint state).
EpochCallback = Callable[[int, Mapping[str, float], Callable[[], dict[str, Any]]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError(f"Trial setting device={name!r} asks for CUDA, but no GPU is visible here. "
                          "Use device=cpu or device=auto.")
    return device


def prepare_device(config: TrialConfig, device: torch.device) -> None:
    """Process-wide numerics for a CUDA trial: exact float32 unless ``cuda_fast_math`` (TF32, cuDNN benchmark).

    PyTorch's own defaults mix the two (TF32 on for convolutions, off for matmuls): a trial's
    numbers then depend on which layers a model has. Nothing changes on a CPU.
    """
    if device.type != "cuda":
        return
    fast = config.cuda_fast_math
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    torch.backends.cudnn.benchmark = fast


def build_trial_model(config: TrialConfig, device: torch.device) -> torch.nn.Module:
    """The trial's model on its device, in the memory format the config asks for there."""
    model = build_model(config.model, config.dataset).to(device)
    if config.channels_last_for(device.type):
        model = model.to(memory_format=torch.channels_last)
    return model


def evaluate(model: torch.nn.Module, data: DeviceData, config: TrialConfig,
             log: Callable[[str], None] = lambda _: None, clean_acc: float | None = None) -> dict[str, float]:
    """Clean accuracy, then every measurement the config asks for (robustsweep.measurements).

    ``config.attacks`` and ``config.curvature`` choose them (the study's defaults: FGSM and PGD; the
    top eigenvalue). The curvature measurements share one Hessian-vector product on one seeded sample
    of training examples. ``clean_acc``: the model's accuracy on ``data.test``, when the caller has just
    measured it (the last epoch's test pass), so it is not measured twice.
    """
    out: dict[str, float] = {}
    device = next(model.parameters()).device
    batch_size = config.eval_batch_for(device.type)
    clock = _PhaseClock(device, out)
    with clock("clean_eval"):
        if clean_acc is None:
            clean_acc = clean_accuracy(model, *data.test.floats(), batch_size)
        out[keys.CLEAN_ACC] = clean_acc
        attacked = data.test.head(config.attack_subset)
        x_att, y_att = attacked.floats()
        # The ratio compares attack and clean accuracy on the same (possibly subset) examples.
        base = clean_acc if attacked is data.test else clean_accuracy(model, x_att, y_att, batch_size)
        out[keys.ATTACKED_CLEAN_ACC] = base
    ctx = MeasureContext(model, data, config, batch_size, clock, log, (x_att, y_att), base)
    try:
        for measurement in measurements.chosen(config):
            out.update(measurement.measure(ctx))
    finally:
        ctx.close()
    if device.type == "cuda":
        out[keys.PEAK_GPU_MIB] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


class _PhaseClock:
    """``with clock("pgd") as seconds:`` adds the block's wall time (device synchronized) to ``seconds_pgd``."""

    def __init__(self, device: torch.device, out: dict[str, float]):
        self.device = device
        self.out = out

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[list[float]]:
        seconds = [0.0]
        t0 = time.perf_counter()
        try:
            yield seconds
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds[0] = time.perf_counter() - t0
            key = keys.phase_seconds_key(phase)
            self.out[key] = self.out.get(key, 0.0) + seconds[0]


def _train_epoch(variant: Variant, batches: DeviceBatches, progress: Optional[Any]) -> tuple[float, float]:
    loss_sum = torch.zeros((), device=batches.split.images.device)
    correct = torch.zeros((), dtype=torch.long, device=batches.split.images.device)
    count = 0
    for x, y in batches:
        step = variant.train_step(x, y)
        loss_sum += step.loss_sum
        correct += step.correct
        count += step.count
        if progress is not None:
            progress.update(1)
    count = max(count, 1)
    return float(loss_sum) / count, float(correct) / count


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def run_trial(config: TrialConfig, *, resume_state: dict[str, Any] | None = None, run_id: str | None = None,
              on_epoch_end: EpochCallback | None = None, tags: Mapping[str, str] | None = None,
              run_name: str | None = None, progress: bool = False,
              log: Callable[[str], None] = lambda _: None, open_run: Callable[..., TrialRun] = TrialRun) -> TrialOutcome:
    """Train, evaluate and log one trial; see the module docstring.

    ``resume_state`` is what a previous attempt's checkpoint held (model,
    variant and RNG states, epoch, history and the MLflow run id): training
    continues from there, into the same MLflow run. ``run_id`` reopens an
    existing MLflow run for a trial that starts from scratch (an earlier
    attempt died before its first checkpoint). ``open_run`` creates or
    reopens the MLflow run, with :class:`TrialRun`'s arguments: in this
    process by default; ``robustsweep run`` passes
    :meth:`~robustsweep.tracking_process.TrackingProcess.open_run`.
    """
    started = time.perf_counter()
    config = config.resolved()
    keep_freed_memory()  # process-wide, once: no page faults on every step's fresh activations
    uri = normalize_tracking_uri(config.mlflow_tracking_uri)
    device = resolve_device(config.device)
    prepare_device(config, device)
    try:
        # The data first: a missing dataset is an error before any MLflow run exists.
        data = DeviceData.load(config.dataset, config.data_root, device, download=config.download,
                               verify_checksums=config.verify_checksums, train_subset=config.subset,
                               test_subset=config.test_subset)
        # Then the model and optimizer, also before the run: creating the first torch optimizer imports
        # torch._dynamo (0.8 s on a CPU), which then overlaps MLflow's start-up in `robustsweep run`.
        torch.manual_seed(config.seed)
        model = build_trial_model(config, device)
        variant = variants.get(config.variant)(model, config, data.train, torch.Generator().manual_seed(config.seed + 1))
    except torch.OutOfMemoryError as exc:
        raise _out_of_memory(exc, device, config) from None
    run = open_run(uri, config.mlflow_experiment, run_id=(resume_state or {}).get("run_id", run_id),
                   run_name=run_name, tags={"git_commit": git_commit(), "torch_version": torch.__version__,
                                            "device_name": device_name(device), **(tags or {})})
    try:
        return _run(config, run, device, data, model, variant, resume_state, on_epoch_end, progress, log, started)
    except torch.OutOfMemoryError as exc:
        run.fail(exc)
        raise _out_of_memory(exc, device, config) from None
    except BaseException as exc:  # KeyboardInterrupt too: the run must not stay RUNNING
        run.fail(exc)
        raise


def dataset_inputs(config: TrialConfig, data: DeviceData) -> dict[str, tuple[str, str, str]]:
    """The trial's data as MLflow run inputs: name (dataset, split, size), digest, source folder."""
    import hashlib

    def entry(split: str, part) -> tuple[str, str, str]:
        digest = hashlib.sha1(part.images.cpu().numpy().tobytes())
        digest.update(part.labels.cpu().numpy().tobytes())
        return f"{config.dataset}-{split}-{len(part)}", digest.hexdigest()[:12], str(config.data_root)

    return {"training": entry("train", data.train), "evaluation": entry("test", data.test)}


def _out_of_memory(exc: BaseException, device: torch.device, config: TrialConfig) -> UserError:
    return UserError(
        f"The trial ran out of memory on {device} ({str(exc).splitlines()[0]}). Lower batch_size, "
        f"eval_batch_size ({config.eval_batch_for(device.type)}) or hessian_samples ({config.hessian_samples}), or give "
        "the trial a larger share of the GPU in the sweep's resources."
    )


def _run(config: TrialConfig, run: TrialRun, device: torch.device, data: DeviceData, model: torch.nn.Module,
         variant: Variant, resume_state: dict[str, Any] | None, on_epoch_end: EpochCallback | None, progress: bool,
         log: Callable[[str], None], started: float) -> TrialOutcome:
    run.log_params(config.to_dict())  # idempotent: a reopened run gets the same values again
    run.log_datasets(dataset_inputs(config, data))  # those the run lacks (a reopened run may have none)
    data_generator = torch.Generator().manual_seed(config.seed)
    batches = DeviceBatches(data.train, config.batch_size, data_generator, flip=config.augment_flip,
                            crop_padding=config.augment_crop)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        variant.load_state_dict(resume_state["variant"])
        data_generator.set_state(resume_state["data_generator"])
        _set_rng_state(resume_state["rng"], device)
        history = list(resume_state["history"])
        start_epoch = int(resume_state["epoch"])
        run.set_tags({"resumed_from_epoch": str(start_epoch)})
        log(f"resumed at epoch {start_epoch} into MLflow run {run.run_id}")

    # What earlier attempts spent up to the checkpoint this one resumes from. A checkpoint written before
    # trial_seconds existed (or by an attempt that did not know it) leaves the cost unknown: this attempt's
    # seconds alone would undercount the trial.
    carried = 0.0 if resume_state is None else resume_state.get(keys.TRIAL_SECONDS)

    def trial_seconds() -> float | None:
        return None if carried is None else float(carried) + time.perf_counter() - started

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "model": model.state_dict(), "variant": variant.state_dict(),
                "data_generator": data_generator.get_state(), "rng": _rng_state(device),
                "history": list(history), "run_id": run.run_id, keys.TRIAL_SECONDS: trial_seconds()}

    def finish(status: str, metrics: dict[str, float], epochs_run: int) -> TrialOutcome:
        """End the run FINISHED with its cost (``trial_seconds``, where known): a trial's last act."""
        seconds = trial_seconds()
        cost = {} if seconds is None else {keys.TRIAL_SECONDS: seconds}
        run.log_metrics(cost, step=epochs_run)
        run.finish("FINISHED")
        return TrialOutcome(status, run.run_id, {**metrics, **cost}, history, epochs_run)

    # A reopened run may hold epochs past the checkpoint (logged just before the process died):
    # they are trained again, identically, but logged once.
    logged = run.logged_steps("train_loss")
    diverged_at = 0
    # stop_train_acc: a checkpoint taken at the stopping epoch has nothing left to train.
    stopped = bool(history) and _reached(config, history[-1]["train_acc"])
    for epoch in range(start_epoch, config.epochs if not stopped else start_epoch):
        if config.fail_at_epoch == epoch + 1 and resume_state is None:
            raise InjectedFailure(f"injected failure in epoch {epoch + 1} (fail_at_epoch, first attempt only)")
        lr = config.lr_at_epoch(epoch)
        variant.set_lr(lr)
        model.train()
        variant.start_epoch(epoch, batches)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch")
        t0 = time.perf_counter()
        train_loss, train_acc = _train_epoch(variant, batches, bar)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        t0 = time.perf_counter()
        test_acc = clean_accuracy(model, *data.test.floats(), config.eval_batch_for(device.type))
        metrics = {"train_loss": train_loss, "train_acc": train_acc, "test_acc": test_acc,
                   "lr": lr, "epoch_seconds": seconds, "test_seconds": time.perf_counter() - t0,
                   **variant.end_epoch()}
        history.append({"epoch": epoch + 1, **metrics})
        if epoch + 1 not in logged:
            run.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=epoch + 1)
        log(f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.4f} train acc {train_acc:.4f} "
            f"test acc {metrics['test_acc']:.4f} lr {lr:.4g} ({seconds:.1f}s)")
        if not math.isfinite(train_loss):
            diverged_at = epoch + 1
            break
        if on_epoch_end is not None:
            try:
                on_epoch_end(epoch + 1, metrics, lambda e=epoch + 1: checkpoint_state(e))
            except TrialStopped:
                log(f"stopped by the scheduler after epoch {epoch + 1}: pruned")
                run.set_tags({"outcome": PRUNED, "pruned_epoch": str(epoch + 1)})
                return finish(PRUNED, {}, epoch + 1)
        if _reached(config, train_acc):
            log(f"training accuracy {train_acc:.4f} reached stop_train_acc={config.stop_train_acc:g} in epoch "
                f"{epoch + 1}: training stops")
            break

    if diverged_at:
        log(f"training diverged in epoch {diverged_at} (loss is not finite): stopped, no attacks or Hessian")
        run.log_metrics({"diverged": 1.0, "diverged_epoch": float(diverged_at)}, step=diverged_at)
        run.set_tags({"outcome": "diverged",
                      "diverged_reason": f"training loss became non-finite in epoch {diverged_at}"})
        return finish("diverged", {"diverged": 1.0, "diverged_epoch": float(diverged_at)}, diverged_at)

    # The last epoch's test pass measured this very model on this very data: its accuracy is clean_acc.
    final = evaluate(model, data, config, log, clean_acc=history[-1]["test_acc"])
    last_epoch = int(history[-1]["epoch"])
    if config.stop_train_acc is not None:
        final[keys.STOPPED_EPOCH] = float(last_epoch)
        final[keys.REACHED_STOP_TRAIN_ACC] = float(_reached(config, history[-1]["train_acc"]))
    final["diverged"] = 0.0
    chance = datasets.get(config.dataset).chance_accuracy
    collapsed = keys.is_collapsed(final[keys.CLEAN_ACC], chance)
    final["collapsed"] = float(collapsed)
    if last_epoch not in run.logged_steps(keys.CLEAN_ACC):
        run.log_metrics(final, step=last_epoch)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "model.pt")
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        run.log_artifact(Path(tmp) / "model.pt")
        run.log_artifact(Path(tmp) / "config.yaml")
    outcome = "collapsed" if collapsed else "finished"
    tags = {"outcome": outcome}
    if collapsed:
        tags["collapsed_reason"] = (f"clean accuracy {final[keys.CLEAN_ACC]:.4f} is within {keys.COLLAPSE_MARGIN} of "
                                    f"chance ({chance:g}): its attack ratios and curvature mean nothing")
        log(f"collapsed: {tags['collapsed_reason']}")
    run.set_tags(tags)
    return finish(outcome, final, last_epoch)


def _reached(config: TrialConfig, train_acc: float) -> bool:
    """Whether an epoch's training accuracy meets stop_train_acc (never, when it is None)."""
    return config.stop_train_acc is not None and train_acc >= config.stop_train_acc
