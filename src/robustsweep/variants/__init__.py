"""Optimizer variants, selected by name. Each lives in its own module behind :class:`~.base.Variant`.

:class:`~.base.Variant` is the public plugin interface: a user's package adds a variant through the
entry-point group ``robustsweep.variants`` (robustsweep.plugins), naming a subclass whose ``name`` is
the entry's name; it may declare its own ``settings`` (robustsweep.plugin_settings). :func:`get`
returns built-ins and plugins alike.
"""

from __future__ import annotations

from .. import plugins
from ..config import VARIANT_NAMES
from .adam import Adam
from .adamw import AdamW
from .asam import ASAM
from .base import StepResult, Variant
from .sam import SAM
from .sgd import SGD
from .sgdnoise import NoisySGD
from .sgdselective import SelectiveBackprop
from .svrg import SVRG

VARIANTS: dict[str, type[Variant]] = {
    cls.name: cls for cls in (SGD, SVRG, NoisySGD, SelectiveBackprop, Adam, AdamW, SAM, ASAM)
}
if set(VARIANTS) != set(VARIANT_NAMES):
    raise ImportError(f"robustsweep.variants defines {sorted(VARIANTS)} but config.VARIANT_NAMES lists "
                      f"{sorted(VARIANT_NAMES)}: name every variant in both places.")



def get(name: str) -> type[Variant]:
    """The variant class called ``name``: a built-in, or an installed plugin's (imported on first use)."""
    if name in VARIANTS:
        return VARIANTS[name]
    return plugins.find("variant", name, VARIANTS,
                        lambda cls: isinstance(cls, type) and issubclass(cls, Variant) and cls.name == name,
                        f"a subclass of robustsweep.variants.Variant whose `name` is {name!r}")


__all__ = ["VARIANTS", "Variant", "StepResult", "get"]
