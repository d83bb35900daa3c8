"""What a measurement declares, and the context it measures in.

A measurement is one class in one module of this package (or a user's plugin, entry-point group
``robustsweep.measurements``). It declares what the rest of robustsweep needs without running it:
its ``name`` (what sweep files list under ``attacks`` or ``curvature``), its ``kind``, its MLflow
keys, its ``phase`` (wall seconds logged as ``seconds_<phase>``), a ``label`` for tables and figures,
whether a log scale suits its values, and which of its keys mean nothing for a collapsed run (a
network predicting one class: attacks cannot lower its accuracy and its loss surface is flat). The
report, the figures, the collapse rule and the cost table read these declarations.

:class:`Attack` holds what every attack shares (eps loop, accuracy and ratio keys); a new attack
implements :meth:`Attack.accuracy`, or :meth:`Attack.correct` when it can tell which examples survive.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from .. import metrics as keys

if TYPE_CHECKING:  # torch is imported only when something is measured
    import torch

    from ..config import TrialConfig
    from ..data import DeviceData
    from ..hessian import HessianOperator

KINDS = ("attack", "curvature")


@dataclass
class MeasureContext:
    """Everything a measurement of one trained model needs, shared across the trial's measurements."""

    model: "torch.nn.Module"
    data: "DeviceData"
    config: "TrialConfig"
    batch_size: int
    #: ``with clock(phase) as seconds:`` adds the block's wall time to ``seconds_<phase>``.
    clock: Callable[[str], Any]
    log: Callable[[str], None]
    #: The attacked test examples (the first ``attack_subset``) and the model's clean accuracy on them.
    attacked: tuple["torch.Tensor", "torch.Tensor"]
    attacked_clean_acc: float
    #: Per-example results of the attacks measured so far, (attack name, eps) -> bool tensor over ``attacked``
    #: (or its first examples): AutoAttack reads PGD's to compare the two on the same images.
    correct: dict[tuple[str, float], Any] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _hessian: Any = None
    _sample: Any = None

    def hessian_sample(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """The fixed, seeded sample of ``hessian_samples`` training examples (the same for every measurement)."""
        if self._sample is None:
            from ..hessian import hessian_sample

            index = hessian_sample(len(self.data.train), self.config.hessian_samples, self.config.seed)
            self._sample = self.data.train.floats(index.to(self.data.train.labels.device))
        return self._sample

    def hessian(self) -> "HessianOperator":
        """The Hessian-vector product on :meth:`hessian_sample`, built by the first measurement that asks."""
        if self._hessian is None:
            from ..hessian import hessian_operator

            x, y = self.hessian_sample()
            self._hessian = self._stack.enter_context(hessian_operator(self.model, x, y, self.batch_size))
        return self._hessian

    def close(self) -> None:
        """Free the Hessian's retained graph and restore the model (mode, frozen parameters)."""
        self._stack.close()
        self._hessian = None


class Measurement:
    """One measurement of a trained model; subclasses declare the class attributes and implement ``measure``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    #: Shown in tables and figures.
    label: ClassVar[str] = ""
    #: Logged as ``seconds_<phase>``.
    phase: ClassVar[str] = ""
    log_scale: ClassVar[bool] = False

    def keys(self, config: "TrialConfig") -> list[str]:
        """The MLflow keys it logs for a trial with this (resolved) config, ``seconds_<phase>`` aside."""
        raise NotImplementedError

    def unreliable_when_collapsed(self, config: "TrialConfig") -> list[str]:
        """The keys that mean nothing for a collapsed run (blanked before any statistic): all, by default."""
        return self.keys(config)

    def measure(self, ctx: MeasureContext) -> dict[str, float]:
        raise NotImplementedError


class Attack(Measurement):
    """An l-inf attack measured at every eps: ``<name>_acc_eps<eps>`` and ``<name>_ratio_eps<eps>``.

    The ratio is the attack's accuracy over the clean accuracy on the same examples. A collapsed
    run's accuracies are kept (they are what was measured) and its ratios blanked (about 1 for a
    constant predictor, which would read as the most robust run).
    """

    kind = "attack"

    def keys(self, config: "TrialConfig") -> list[str]:
        return [keys.attack_key(self.name, what, e) for e in config.eps for what in ("acc", "ratio")]

    def unreliable_when_collapsed(self, config: "TrialConfig") -> list[str]:
        return [keys.attack_key(self.name, "ratio", e) for e in config.eps]

    def examples(self, ctx: MeasureContext) -> tuple["torch.Tensor", "torch.Tensor", float, dict[str, float]]:
        """(inputs, targets, clean accuracy on them, extra metrics): the attacked examples by default."""
        return (*ctx.attacked, ctx.attacked_clean_acc, {})

    def correct(self, ctx: MeasureContext, x: "torch.Tensor", y: "torch.Tensor", eps: float) -> "torch.Tensor | None":
        """Per example, whether the model is still right under this attack (a bool tensor), or None if the
        attack only gives :meth:`accuracy`."""
        return None

    def accuracy(self, ctx: MeasureContext, x: "torch.Tensor", y: "torch.Tensor", eps: float) -> float:
        """The model's accuracy on (x, y) under this attack at radius ``eps``."""
        raise NotImplementedError

    def measure(self, ctx: MeasureContext) -> dict[str, float]:
        x, y, base, out = self.examples(ctx)
        for eps in ctx.config.eps:
            with ctx.clock(self.phase) as seconds:
                mask = self.correct(ctx, x, y, eps)
                if mask is None:
                    acc = self.accuracy(ctx, x, y, eps)
                else:
                    ctx.correct[(self.name, eps)] = mask
                    acc = int(mask.sum()) / max(len(y), 1)
            out[keys.attack_key(self.name, "acc", eps)] = acc
            out[keys.attack_key(self.name, "ratio", eps)] = acc / base if base > 0 else 0.0
            ctx.log(f"{self.name} eps={eps:g}: accuracy {acc:.4f} on {len(y)} images ({seconds[0]:.1f}s)")
        return out
