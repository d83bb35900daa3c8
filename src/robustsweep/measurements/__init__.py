"""The measurements a trial can take of its trained model, one module each, behind one registry.

Built-ins: the attacks ``fgsm``, ``pgd`` (the study's) and ``autoattack``; the curvature measures
``top_eig`` (the study's), ``top_k`` and ``trace``. Users' packages add their own through the
entry-point group ``robustsweep.measurements`` (robustsweep.plugins): the entry's attribute is a
subclass of :class:`Measurement` (or :class:`Attack`) whose ``name`` is the entry's name.
Nothing here imports torch: measuring does, when it happens.
"""

from __future__ import annotations

from .. import plugins
from .autoattack import AutoAttack
from .base import KINDS, Attack, MeasureContext, Measurement
from .fgsm import FGSM
from .pgd import PGD
from .top_eig import TopEigenvalue
from .top_k import TopK
from .trace import Trace

BUILTIN: dict[str, type[Measurement]] = {cls.name: cls for cls in (FGSM, PGD, AutoAttack, TopEigenvalue, TopK, Trace)}


def get(name: str) -> Measurement:
    """The measurement called ``name``, built-in or a plugin's (imported on first use)."""
    if name in BUILTIN:
        return BUILTIN[name]()
    cls = plugins.find("measurement", name, BUILTIN,
                       lambda c: isinstance(c, type) and issubclass(c, Measurement) and c.name == name
                       and c.kind in KINDS,
                       f"a subclass of robustsweep.measurements.Measurement whose name is {name!r} and whose kind "
                       f"is one of {', '.join(KINDS)}")
    return cls()


def names(kind: str) -> list[str]:
    """Every measurement of ``kind`` ("attack" or "curvature"): built-ins, then installed plugins."""
    plugins.check_no_clash("measurement", BUILTIN)
    builtin = [n for n, cls in BUILTIN.items() if cls.kind == kind]
    return builtin + [n for n in plugins.names("measurement") if get(n).kind == kind]


def chosen(config) -> list[Measurement]:
    """The measurements a (resolved) trial config asks for, attacks first, in the order given."""
    return [get(name) for name in (*config.attacks, *config.curvature)]


__all__ = ["Attack", "BUILTIN", "KINDS", "MeasureContext", "Measurement", "chosen", "get", "names"]
