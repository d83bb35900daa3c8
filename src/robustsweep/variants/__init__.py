"""Optimizer variants, selected by name. Each lives in its own module behind :class:`~.base.Variant`."""

from __future__ import annotations

from ..config import VARIANT_NAMES
from .adam import Adam
from .adamw import AdamW
from .base import StepResult, Variant
from .sgd import SGD
from .sgdnoise import NoisySGD
from .sgdselective import SelectiveBackprop
from .svrg import SVRG

VARIANTS: dict[str, type[Variant]] = {
    cls.name: cls for cls in (SGD, SVRG, NoisySGD, SelectiveBackprop, Adam, AdamW)
}
if set(VARIANTS) != set(VARIANT_NAMES):
    raise ImportError(f"robustsweep.variants defines {sorted(VARIANTS)} but config.VARIANT_NAMES lists "
                      f"{sorted(VARIANT_NAMES)}: name every variant in both places.")

__all__ = ["VARIANTS", "Variant", "StepResult"]
