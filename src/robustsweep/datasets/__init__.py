"""The datasets a trial can train on, one module each, behind one registry (built-ins and plugins).

Built-ins: ``mnist`` and ``cifar10``, the study's. A user's package adds one through the
entry-point group ``robustsweep.datasets``: the entry's attribute is a :class:`Dataset` whose
``name`` is the entry's name. Nothing here imports torch.
"""

from __future__ import annotations

from .. import plugins
from .base import Dataset
from .cifar10 import CIFAR10
from .mnist import MNIST

BUILTIN: dict[str, Dataset] = {d.name: d for d in (MNIST, CIFAR10)}


def get(name: str) -> Dataset:
    """The dataset called ``name``: built-in, or an installed plugin's (imported on first use)."""
    if name in BUILTIN:
        return BUILTIN[name]
    return plugins.find("dataset", name, BUILTIN, lambda d: isinstance(d, Dataset) and d.name == name,
                        f"a robustsweep.datasets.Dataset whose name is {name!r}")


def names() -> list[str]:
    plugins.check_no_clash("dataset", BUILTIN)
    return list(BUILTIN) + plugins.names("dataset")


__all__ = ["BUILTIN", "Dataset", "get", "names"]
