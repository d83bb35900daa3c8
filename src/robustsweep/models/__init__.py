"""The models a trial can train, one module each, behind one registry (built-ins and plugins).

A model is an ``nn.Module`` class taking ``(num_classes, mean, std)``, which :func:`build_model` fills
from the trial's dataset (robustsweep.datasets), and declaring ``input_shape`` (C, H, W); it takes
pixels in [0, 1] and normalizes inside (``Normalize``), so attacks work in pixel space. A user's
package adds one through the entry-point group ``robustsweep.models``. Built-ins are named here as
``module:attribute``, as entry points are, so listing them imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .. import plugins
from ..errors import ConfigError

BUILTIN = {"m1": "robustsweep.models.m1:M1", "vgg11": "robustsweep.models.vgg11:VGG11"}


def names() -> list[str]:
    plugins.check_no_clash("model", BUILTIN)
    return list(BUILTIN) + plugins.names("model")


def get(name: str) -> type:
    """The model class called ``name`` (built-in or a plugin's); imports torch."""
    if name in BUILTIN:
        module, attribute = BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attribute)
    return plugins.find("model", name, BUILTIN,
                        lambda cls: isinstance(cls, type) and isinstance(getattr(cls, "input_shape", None), tuple),
                        "an nn.Module class with an `input_shape` (channels, height, width)")


def build_model(name: str, dataset: str = "") -> Any:
    """Model ``name`` for ``dataset``'s images, classes and normalization (default: the model's own defaults)."""
    cls = get(name)
    if not dataset:
        return cls()
    from .. import datasets

    spec = datasets.get(dataset)
    if tuple(cls.input_shape) != tuple(spec.image_shape):
        raise ConfigError(f"Invalid trial setting model={name!r}: it takes {cls.input_shape} images, dataset "
                          f"{dataset} has {spec.image_shape}. Use model={spec.default_model} (or model: null).")
    return cls(num_classes=spec.num_classes, mean=spec.mean, std=spec.std)


def __getattr__(attribute: str) -> Any:
    """``from robustsweep.models import M1, VGG11, Normalize`` keeps working, importing torch only then."""
    lazy = {"M1": "m1", "VGG11": "vgg11", "Normalize": "base", "VGG11_LAYERS": "vgg11"}
    if attribute in lazy:
        return getattr(importlib.import_module(f"{__name__}.{lazy[attribute]}"), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


__all__ = ["BUILTIN", "build_model", "get", "names"]
