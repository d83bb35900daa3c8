"""The typed configuration of one trial, validated when it is loaded.

A :class:`TrialConfig` is built from a YAML mapping and ``key=value``
overrides (:func:`load_trial_config`). Unknown keys, wrong types and
impossible values are rejected with a :class:`~robustsweep.errors.ConfigError`
that names the key and what is allowed. Settings whose study default depends
on the dataset (model, epochs, eps, schedule) may be left as ``None``;
:meth:`TrialConfig.resolved` fills them in, and that resolved config is what a
trial runs and logs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml

from . import datasets, measurements, models, plugin_settings, plugins
from .errors import ConfigError

class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 and 1e6 as floats (YAML 1.1, and so PyYAML, reads them as strings)
    and rejects a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges keys that the mapping's own keys may override
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1}): give each key once",
                    key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML safely, with scientific-notation numbers read as floats."""
    return yaml.load(text, Loader=_Loader)


#: The study's base constant learning rate, used when neither lr nor lr_batch_ratio is given.
STUDY_BASE_LR = 0.01
#: sgdnoise's sigma when none is given: the study's Algorithm 2 draws W = 1 + V, V Gaussian of a fixed
#: scale it does not state; 1.0 doubles the minibatch gradient-noise covariance at every batch size.
DEFAULT_NOISE_STD = 1.0
#: The optimizer variants, one module each in robustsweep.variants (named here so that checking a
#: config does not import torch; variants/__init__.py refuses to load if the two disagree).
VARIANT_NAMES = ("sgd", "svrg", "sgdnoise", "sgdselective", "adam", "adamw", "sam", "asam")
#: sam_rho when none is given, per variant. sam: 0.05, the radius Foret et al. (ICLR 2021) use most
#: (and davda54/sam's PyTorch default). asam: 0.5, Kwon et al.'s CIFAR setting (ICML 2021; their
#: SamsungLabs/ASAM code's default, and the author's note in davda54/sam#37 that all their CIFAR-10 runs
#: used 0.5 with that code, which leaves biases unnormalized).
DEFAULT_SAM_RHO = {"sam": 0.05, "asam": 0.5}
#: asam's eta in T_w = |w| + eta: the default of Kwon et al.'s ASAM class (SamsungLabs/ASAM asam.py).
DEFAULT_ASAM_ETA = 0.01
DATA_ROOT_ENV = "ROBUSTSWEEP_DATA_ROOT"
#: Evaluation batch sizes when eval_batch_size is None: the fastest for M1 in bench/side_by_side.py
#: on each device (accuracies and the eigenvalue do not depend on it).
EVAL_BATCH_CPU = 256
EVAL_BATCH_CUDA = 1024


def _opt(default: Any, help: str) -> Any:
    """A dataclass field with its documentation attached (shown by ``robustsweep options``)."""
    return field(default=default, metadata={"help": help})


def default_data_root() -> str:
    return os.environ.get(DATA_ROOT_ENV, "data")


@dataclass(frozen=True)
class TrialConfig:
    """Every setting of one trial: data, model, optimizer variant, evaluation, tracking."""

    # ---- data -------------------------------------------------------------
    dataset: str = _opt("mnist", "Dataset: mnist or cifar10 (the study's), or an installed plugin's "
                                 "(robustsweep.datasets).")
    data_root: str = field(
        default_factory=default_data_root,
        metadata={"help": f"Folder holding the torchvision dataset files (env {DATA_ROOT_ENV}; default ./data)."},
    )
    download: bool = _opt(True, "Download the dataset into data_root when it is missing (needs internet).")
    verify_checksums: bool = _opt(
        True, "cifar10: check the published md5 sums of the batch files (off for CIFAR-format files you wrote yourself)."
    )
    subset: int = _opt(0, "Train on the first N training examples only (0 = the whole training split).")
    test_subset: int = _opt(0, "Evaluate test accuracy on the first N test examples only (0 = all).")
    # The study flips both datasets horizontally (odd for digits, but that is what it did).
    augment_flip: bool = _opt(True, "Random horizontal flips during training (the study flips both datasets).")
    augment_crop: Optional[int] = _opt(
        None, "Zero padding in pixels for random crops (None = 4 for cifar10, the study's setting; 0 for mnist)."
    )

    # ---- model ------------------------------------------------------------
    model: Optional[str] = _opt(None, "Model: m1, vgg11 or an installed plugin's (None = the dataset's: m1 for "
                                      "mnist, vgg11 for cifar10, as in the study).")

    # ---- optimizer --------------------------------------------------------
    variant: str = _opt("sgd", "Optimizer variant: sgd, svrg, sgdnoise, sgdselective, adam, adamw, sam, asam.")
    lr: Optional[float] = _opt(None, "Learning rate (None = 0.01, the study's base constant rate, unless lr_batch_ratio is set).")
    lr_batch_ratio: Optional[float] = _opt(
        None, "Constant learning-rate-to-batch-size ratio: lr = ratio * batch_size (study: 0.005/32 for the SGD family)."
    )
    momentum: float = _opt(0.0, "Heavy-ball momentum (SGD family).")
    weight_decay: float = _opt(0.0, "L2 weight decay (decoupled for adamw).")
    betas: tuple[float, ...] = _opt((0.9, 0.999), "Adam/AdamW betas (PyTorch defaults).")
    schedule: Literal["constant", "step"] = _opt("constant", "Learning-rate schedule: constant or step.")
    lr_milestones: Optional[tuple[int, ...]] = _opt(
        None, "Epochs at which the step schedule multiplies the rate by lr_gamma (None = the dataset's study default)."
    )
    lr_step_every: Optional[int] = _opt(
        None, "Multiply the rate by lr_gamma every N epochs (alternative to lr_milestones; mnist study default: 10)."
    )
    lr_gamma: Optional[float] = _opt(
        None, "Step-schedule factor (None = study default: 0.5 for mnist, 0.1 for cifar10)."
    )
    batch_size: int = _opt(128, "Minibatch size.")
    epochs: Optional[int] = _opt(None, "Training epochs (None = 30 for mnist, 90 for cifar10; see sweeps/table1.yaml).")
    stop_train_acc: Optional[float] = _opt(
        None, "Stop training at the end of the first epoch whose training accuracy (over that epoch) reaches this "
              "fraction; epochs is then the cap (None = train all epochs). The epoch it stopped at is logged as "
              "stopped_epoch.")
    seed: int = _opt(0, "Seed for weights, data order, augmentation, noise, attacks and the Hessian sample.")
    device: str = _opt("auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")

    # ---- SGD variants (see each module in robustsweep.variants) ------------
    svrg_snapshot_every: int = _opt(1, "SVRG: epochs between snapshots (Johnson & Zhang: once per epoch).")
    svrg_snapshot_batch: int = _opt(
        0, "SVRG: examples in the snapshot gradient (0 = the full training set; N >= batch_size: Babanezhad et al.'s large batch)."
    )
    noise_std: Optional[float] = _opt(
        None, "sgdnoise: std sigma of the multiplicative loss-weight noise, the same at every batch size "
              "(None = 1.0 unless noise_ref_batch is set; see variants/sgdnoise.py)."
    )
    noise_ref_batch: Optional[int] = _opt(
        None, "sgdnoise, opt-in: emulate SGD at this batch size, sigma^2 = batch_size/ref - 1 (zero noise at and "
              "below ref; counts the batch twice under lr_batch_ratio)."
    )
    sb_beta: float = _opt(3.0, "sgdselective: selectivity exponent beta in P = CDF(loss)^beta (Jiang et al. study 1, "
                               "2 and 3; 3 is their reference code's default).")
    sb_history: int = _opt(1024, "sgdselective: R, number of recent losses the CDF is taken over (reference code: 1024).")
    # None resolves per variant: 0.05 for sam (Foret et al. 2021), 0.5 for asam (Kwon et al. 2021, CIFAR).
    sam_rho: Optional[float] = _opt(
        None, "sam, asam: radius rho of the weight perturbation (None = the variant's paper default: 0.05 for "
              "sam, Foret et al. 2021; 0.5 for asam, Kwon et al. 2021's CIFAR setting; see variants/sam.py).")
    # Kwon et al.'s ASAM class default (SamsungLabs/ASAM).
    asam_eta: float = _opt(DEFAULT_ASAM_ETA, "asam: eta in the element-wise operator T_w = |w| + eta, which keeps "
                                             "zero weights perturbable (Kwon et al.'s code: 0.01).")

    # ---- evaluation -------------------------------------------------------
    eps: Optional[tuple[float, ...]] = _opt(
        None, "Attack radii in [0, 1] pixel units (None = study defaults: 0.03, 0.15 for mnist; 0.02 for cifar10)."
    )
    attacks: tuple[str, ...] = _opt(
        ("fgsm", "pgd"), "Attacks measured at every eps: fgsm, pgd (the study's) and autoattack (APGD-CE + APGD-T, "
                         "see robustsweep/attacks.py).")
    # The study does not give PGD's steps; 20 steps of 2.5*eps/steps is Madry et al. (2018)'s rule.
    pgd_steps: int = _opt(20, "PGD iterations.")
    pgd_step_size: Optional[float] = _opt(None, "PGD step size (None = 2.5 * eps / pgd_steps, Madry et al. 2018).")
    attack_subset: int = _opt(0, "Attack the first N test examples only (0 = the whole test set).")
    # AutoAttack "standard"'s settings (Croce & Hein 2020): 100 iterations, 9 target classes.
    autoattack_subset: int = _opt(0, "AutoAttack on the first N of the attacked examples only (0 = all of them).")
    autoattack_steps: int = _opt(100, "AutoAttack: iterations of each APGD run (reference AutoAttack: 100).")
    autoattack_targets: int = _opt(9, "AutoAttack: target classes of APGD-T, the most likely wrong ones first "
                                      "(reference AutoAttack: 9, all wrong classes of a 10-class problem).")
    eval_batch_size: Optional[int] = _opt(
        None, "Examples per batch for test accuracy, attacks and the Hessian's retained graphs (None = per device: "
              f"{EVAL_BATCH_CPU} on a CPU, {EVAL_BATCH_CUDA} on a GPU, the fastest measured in bench/; results "
              "do not depend on it)."
    )
    hessian_samples: int = _opt(1000, "Fixed, seeded sample of training examples for the Hessian eigenvalue.")
    hessian_method: Literal["lanczos", "power"] = _opt(
        "lanczos", "Top Hessian eigenvalue by Lanczos on Hessian-vector products, or 'power': PyHessian's "
                   "power iteration (see robustsweep/hessian.py)."
    )
    # PyHessian's own defaults (maxIter=100, tol=1e-3).
    hessian_iters: int = _opt(100, "Maximum Hessian-vector products for the top eigenvalue (PyHessian's maxIter).")
    hessian_tol: float = _opt(1e-3, "Lanczos: bound on the eigenvalue's relative error (its residual); power: "
                                    "relative change between iterations (PyHessian's tol).")
    curvature: tuple[str, ...] = _opt(
        ("top_eig",), "Curvature measurements on the Hessian sample: top_eig (the study's), top_k (the "
                      "hessian_top_k largest eigenvalues, one Lanczos run) and trace (Hutchinson, with its "
                      "standard error).")
    hessian_top_k: int = _opt(5, "top_k: how many of the largest Hessian eigenvalues.")
    # PyHessian's trace() draws at most 100 Rademacher probes.
    hessian_trace_probes: int = _opt(100, "trace: Rademacher probes of Hutchinson's estimator (PyHessian: 100).")
    cuda_fast_math: bool = _opt(False, "GPU only: TensorFloat-32 matmuls and convolutions and cuDNN's benchmark "
                                       "mode (faster, but the low bits of results change; see bench/).")
    channels_last: Optional[bool] = _opt(
        None, "Convolution weights in channels-last (NHWC) memory (None = on a CPU, where oneDNN trains M1 1.4x and "
              "attacks it 2.5x faster, off on a GPU, where M1's step was 7% slower; bench/). Results do not change "
              "beyond float rounding."
    )

    # ---- tracking ---------------------------------------------------------
    mlflow_tracking_uri: str = _opt("sqlite:///mlflow.db", "MLflow tracking URI (SQLite file, or http://host:port).")
    mlflow_experiment: str = _opt("robustsweep", "MLflow experiment name.")

    # ---- plugins ----------------------------------------------------------
    #: The settings plugins declare (robustsweep.plugin_settings), as sorted (name, value) pairs. Given and
    #: logged as top-level settings (``to_dict`` flattens them); not a setting of its own.
    plugin_settings: tuple[tuple[str, Any], ...] = field(default=(), repr=False)

    # ---- testing ----------------------------------------------------------
    fail_at_epoch: int = _opt(
        0, "Test-only fault injection: raise in this epoch (1-based) on a trial's first attempt (0 = never)."
    )

    # -----------------------------------------------------------------------
    def channels_last_for(self, device_type: str) -> bool:
        """channels_last, or the device's default when it is None (on for a CPU, off for a GPU)."""
        return device_type != "cuda" if self.channels_last is None else self.channels_last

    def eval_batch_for(self, device_type: str) -> int:
        """eval_batch_size, or the device's default when it is None."""
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        return EVAL_BATCH_CUDA if device_type == "cuda" else EVAL_BATCH_CPU

    def setting(self, name: str) -> Any:
        """A plugin's setting (``config.setting("my_alpha")``), its declared default when not given."""
        given = dict(self.plugin_settings)
        if name in given:
            return given[name]
        defaults = plugin_settings.defaults_for(self.variant, self.attacks + self.curvature)
        if name not in defaults:
            raise KeyError(f"{name!r} is not a setting of variant {self.variant!r} or of this trial's measurements")
        return defaults[name]

    def resolved(self) -> "TrialConfig":
        """Fill every dataset-dependent default with the dataset's (the study's) value and validate the whole."""
        self.validate()  # an unknown dataset is one paragraph, before its defaults are looked up
        spec = datasets.get(self.dataset)
        changes: dict[str, Any] = {}
        defaults = plugin_settings.defaults_for(self.variant, self.attacks + self.curvature)
        if defaults:  # a plugin's settings are logged (and so shown) with their defaults filled in
            changes["plugin_settings"] = tuple(sorted({**defaults, **dict(self.plugin_settings)}.items()))
        if self.model is None:
            changes["model"] = spec.default_model
        if self.augment_crop is None:
            changes["augment_crop"] = spec.augment_crop
        if self.epochs is None:
            changes["epochs"] = spec.epochs
        if self.eps is None:
            changes["eps"] = spec.eps
        if self.lr is None and self.lr_batch_ratio is None:
            changes["lr"] = STUDY_BASE_LR
        if self.schedule == "step":
            if self.lr_milestones is None and self.lr_step_every is None:
                if spec.step_milestones is not None:
                    changes["lr_milestones"] = spec.step_milestones
                else:
                    changes["lr_step_every"] = spec.step_every
            if self.lr_gamma is None:
                changes["lr_gamma"] = spec.step_gamma
        if self.variant == "sgdnoise" and self.noise_std is None and self.noise_ref_batch is None:
            changes["noise_std"] = DEFAULT_NOISE_STD
        if self.variant in DEFAULT_SAM_RHO and self.sam_rho is None:
            changes["sam_rho"] = DEFAULT_SAM_RHO[self.variant]
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    @property
    def effective_lr(self) -> float:
        """The initial learning rate: lr, or lr_batch_ratio * batch_size."""
        if self.lr_batch_ratio is not None:
            return self.lr_batch_ratio * self.batch_size
        return STUDY_BASE_LR if self.lr is None else self.lr

    def lr_at_epoch(self, epoch: int) -> float:
        """Learning rate for 0-based ``epoch``: the initial rate times gamma per milestone passed."""
        base = self.effective_lr
        if self.schedule == "constant":
            return base
        if self.lr_step_every:
            passed = epoch // self.lr_step_every
        else:
            passed = sum(epoch >= m for m in (self.lr_milestones or ()))
        return base * (self.lr_gamma ** passed)

    def validate(self) -> None:
        """Check values and cross-field rules; raise ConfigError naming the key."""
        def bad(key: str, value: Any, allowed: str) -> ConfigError:
            return ConfigError(f"Invalid trial setting {key}={value!r}: {allowed}.")

        if self.variant not in VARIANT_NAMES:
            plugins.check_no_clash("variant", set(VARIANT_NAMES))
            if self.variant not in plugins.entries("variant"):
                raise bad("variant", self.variant, "allowed variants are "
                          + ", ".join(sorted(VARIANT_NAMES) + plugins.names("variant")))
        if self.dataset not in datasets.BUILTIN and self.dataset not in datasets.names():
            raise bad("dataset", self.dataset, "allowed datasets are " + ", ".join(datasets.names()))
        if self.model is not None and self.model not in models.BUILTIN and self.model not in models.names():
            raise bad("model", self.model, "allowed models are " + ", ".join(models.names()))
        builtin_pair = self.dataset in datasets.BUILTIN and self.model in models.BUILTIN
        if builtin_pair and datasets.get(self.dataset).default_model != self.model:
            # the built-in models fit one dataset's images each; a plugin's shape is checked when it is built
            raise bad("model", self.model, f"dataset {self.dataset} is trained with model "
                                           f"{datasets.get(self.dataset).default_model}")
        if self.lr is not None and self.lr_batch_ratio is not None:
            raise ConfigError(
                f"Trial settings lr={self.lr} and lr_batch_ratio={self.lr_batch_ratio} are both set: "
                "give either a learning rate or a constant learning-rate-to-batch-size ratio, not both."
            )
        positive = {"lr": self.lr, "lr_batch_ratio": self.lr_batch_ratio, "batch_size": self.batch_size,
                    "epochs": self.epochs, "pgd_steps": self.pgd_steps, "eval_batch_size": self.eval_batch_size,
                    "hessian_samples": self.hessian_samples, "hessian_iters": self.hessian_iters,
                    "hessian_tol": self.hessian_tol, "svrg_snapshot_every": self.svrg_snapshot_every,
                    "sb_beta": self.sb_beta, "sb_history": self.sb_history, "lr_gamma": self.lr_gamma,
                    "lr_step_every": self.lr_step_every, "noise_ref_batch": self.noise_ref_batch,
                    "pgd_step_size": self.pgd_step_size, "autoattack_steps": self.autoattack_steps,
                    "autoattack_targets": self.autoattack_targets, "hessian_top_k": self.hessian_top_k,
                    "hessian_trace_probes": self.hessian_trace_probes, "sam_rho": self.sam_rho}
        for key, value in positive.items():
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise bad(key, value, "must be a finite number > 0")
        non_negative = {"subset": self.subset, "test_subset": self.test_subset, "attack_subset": self.attack_subset,
                        "momentum": self.momentum, "weight_decay": self.weight_decay,
                        "augment_crop": self.augment_crop, "svrg_snapshot_batch": self.svrg_snapshot_batch,
                        "noise_std": self.noise_std, "fail_at_epoch": self.fail_at_epoch,
                        "autoattack_subset": self.autoattack_subset, "asam_eta": self.asam_eta}
        for key, value in non_negative.items():
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise bad(key, value, "must be a finite number >= 0")
        if self.momentum >= 1:
            raise bad("momentum", self.momentum, "must be in [0, 1)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", list(self.betas), "must be two numbers in [0, 1)")
        for key, chosen, kind in (("attacks", self.attacks, "attack"), ("curvature", self.curvature, "curvature")):
            builtin = [name for name, cls in measurements.BUILTIN.items() if cls.kind == kind]
            if all(c in builtin for c in chosen) and len(set(chosen)) == len(chosen):
                continue
            allowed = measurements.names(kind)  # the installed plugins too (imported to learn their kind)
            if any(c not in allowed for c in chosen) or len(set(chosen)) != len(chosen):
                raise bad(key, list(chosen), f"must be a list of distinct {kind} measurements from "
                                             + ", ".join(allowed))
        if self.autoattack_targets > 9:
            raise bad("autoattack_targets", self.autoattack_targets,
                      "must be at most 9 (the wrong classes of a 10-class dataset)")
        if self.hessian_trace_probes < 2:
            raise bad("hessian_trace_probes", self.hessian_trace_probes, "must be >= 2 (for a standard error)")
        if self.stop_train_acc is not None and not 0 < self.stop_train_acc <= 1:
            raise bad("stop_train_acc", self.stop_train_acc, "must be a training accuracy in (0, 1]")
        if self.eps is not None:
            if not self.eps or not all(0 <= e <= 1 for e in self.eps):
                raise bad("eps", list(self.eps), "must be a non-empty list of radii in [0, 1] (pixels are in [0, 1])")
        if self.lr_milestones is not None and (
            any(m < 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(set(self.lr_milestones))
        ):
            raise bad("lr_milestones", list(self.lr_milestones), "must be strictly increasing epochs >= 1")
        if self.lr_milestones is not None and self.lr_step_every is not None:
            raise ConfigError("Trial settings lr_milestones and lr_step_every are both set: give one of them.")
        if self.svrg_snapshot_batch and self.svrg_snapshot_batch < self.batch_size:
            raise bad("svrg_snapshot_batch", self.svrg_snapshot_batch,
                      f"must be 0 (full training set) or >= batch_size ({self.batch_size})")
        if self.noise_std is not None and self.noise_ref_batch is not None:
            raise ConfigError("Trial settings noise_std and noise_ref_batch are both set: give one of them.")
        if not (self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise bad("device", self.device, "allowed: auto, cpu, cuda, cuda:N")
        if not self.mlflow_experiment.strip():
            raise bad("mlflow_experiment", self.mlflow_experiment, "must be a non-empty name")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-friendly values (tuples become lists), plugins' settings among the built-in ones."""
        values = {name: getattr(self, name) for name in FIELDS}
        values.update(self.plugin_settings)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


# ---------------------------------------------------------------------------
# loading and type checking

#: The built-in settings (plugin_settings holds the plugins' and is no setting itself).
FIELDS = {f.name: f for f in dataclasses.fields(TrialConfig) if f.name != "plugin_settings"}
_HINTS = typing.get_type_hints(TrialConfig)


def _annotation(key: str) -> Any:
    """The type of setting ``key``: a built-in's, or the one a plugin declares."""
    if key in _HINTS and key != "plugin_settings":
        return _HINTS[key]
    declared = plugin_settings.lookup(key)
    if declared is None:
        raise ConfigError(f"Unknown trial setting {key!r}. Run `robustsweep options` to list every setting.")
    return declared.type


def is_setting(key: Any) -> bool:
    """Whether ``key`` names a built-in setting or one an installed plugin declares."""
    return key in FIELDS or (isinstance(key, str) and plugin_settings.lookup(key) is not None)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(annotation, str(annotation))


def coerce(key: str, value: Any, annotation: Any = None) -> Any:
    """Check ``value`` against the type of setting ``key``; return it in canonical form."""
    top = _annotation(key)
    annotation = top if annotation is None else annotation
    origin = typing.get_origin(annotation)

    def fail() -> ConfigError:
        return ConfigError(
            f"Invalid trial setting {key}={value!r}: expected {_type_name(top)}."
        )

    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return coerce(key, value, inner)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise fail()
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail()
        item = typing.get_args(annotation)[0]
        return tuple(coerce(key, v, item) for v in value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # a bug, not a user error


def coerce_each(key: str, values: list[Any], where, path: str) -> list[Any]:
    """Each of ``values`` checked and made canonical as setting ``key`` (:func:`coerce`); a bad one is
    ``where.error`` at ``path[i]`` (the sweep file's place of a grid axis or a search's choice)."""
    checked = []
    for i, value in enumerate(values):
        try:
            checked.append(coerce(key, value))
        except ConfigError as exc:
            raise where.error(f"{path}[{i}]", str(exc)) from None
    return checked


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as YAML (``eps=[0.03,0.15]``, ``lr=0.1``)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"Override {item!r} is not of the form key=value (for example lr=0.1 or eps=[0.03,0.15]).")
        try:
            parsed[key] = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            parsed[key] = raw
    return parsed


def check_keys(mapping: Mapping[str, Any], where: str) -> None:
    """Reject keys that are not TrialConfig settings, suggesting the closest name."""
    import difflib

    for key in mapping:
        if not is_setting(key):
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown trial setting {key!r} in {where}.{hint} "
                "Run `robustsweep options` to list every setting with its meaning."
            )


def make_trial_config(values: Mapping[str, Any], where: str = "the trial config", *,
                      validate: bool = True) -> TrialConfig:
    """Build a TrialConfig from a mapping of setting -> value, checking names and types (``validate``: and
    values; False where :meth:`TrialConfig.resolved` follows, which validates first)."""
    check_keys(values, where)
    kwargs = {k: coerce(k, v) for k, v in values.items() if k in FIELDS}
    extra = tuple(sorted((k, coerce(k, v)) for k, v in values.items() if k not in FIELDS))
    config = TrialConfig(**kwargs, plugin_settings=extra)
    if validate:
        config.validate()
    return config


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must contain a mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist. Check the path (it is read relative to {Path.cwd()}).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not a text (UTF-8) YAML file: byte {exc.start} cannot be "
                          "decoded. Check that the path names the YAML file you meant.") from None
    except OSError as exc:
        raise ConfigError(f"Config file {path} cannot be read ({exc.strerror or exc}). Check the path and "
                          "its permissions.") from None
    if "\x00" in text:
        raise ConfigError(f"Config file {path} holds NUL bytes, so it is not a YAML text file. Check that the "
                          "path names the YAML file you meant.")
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"Config file {path} is not valid YAML{where}: {problem}. Fix the syntax there.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must contain a mapping of setting: value, not a {type(data).__name__}.")
    return data


def load_trial_config(path: str | Path | None, overrides: list[str] | None = None) -> TrialConfig:
    """Load a trial config from YAML (or defaults when ``path`` is None) plus ``key=value`` overrides."""
    values: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    check_keys(values, str(path))
    override_values = parse_overrides(overrides or [])
    check_keys(override_values, "the command-line overrides")
    values.update(override_values)
    return make_trial_config(values, str(path) if path else "the command-line overrides")
