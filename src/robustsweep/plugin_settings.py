"""Settings that plugins declare: typed, validated, listed and logged like the built-in ones.

A plugin variant or measurement may declare ``settings = {"name": Setting(float, 0.5, "meaning")}``
on its class. Trials then accept ``name`` as a trial setting wherever built-in ones go (sweep files,
``--set``, ``robustsweep run name=...``): its value is checked against the declared type, it is part
of the trial's MLflow params and, when it differs from its default, of the trial id; ``robustsweep
options`` lists it under its plugin. Declared names must not be built-in settings, nor another
plugin's. Built-in variants keep their settings in :class:`~robustsweep.config.TrialConfig`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from . import plugins


@dataclass(frozen=True)
class Setting:
    """A plugin's setting: its type (bool, int, float, str, ``Optional[...]`` or ``tuple[float, ...]``, as for
    the built-in settings), its default and its meaning (shown by ``robustsweep options``)."""

    type: Any
    default: Any
    help: str = ""


def _plugin_class(kind: str, name: str) -> type | None:
    """The class of plugin ``name`` of ``kind`` ("variant" or "measurement"), or None for a built-in."""
    if kind == "variant":
        from .config import VARIANT_NAMES

        if name in VARIANT_NAMES or name not in plugins.entries("variant"):
            return None
        from . import variants

        return variants.get(name)
    from . import measurements

    if name in measurements.BUILTIN or name not in plugins.entries("measurement"):
        return None
    return type(measurements.get(name))


def declared_by(kind: str, name: str) -> dict[str, Setting]:
    """The settings plugin ``name`` of ``kind`` declares ({} for built-ins and unknown names)."""
    cls = _plugin_class(kind, name)
    declared = getattr(cls, "settings", None) or {}
    if not isinstance(declared, dict) or not all(isinstance(s, Setting) for s in declared.values()):
        raise plugins.PluginError(
            f"The {kind} plugin {name!r} declares `settings` that are not a dict of name -> "
            "robustsweep.plugin_settings.Setting. Fix its class.")
    return dict(declared)


@functools.lru_cache(maxsize=1)
def all_declared() -> dict[str, tuple[Setting, str]]:
    """Every installed plugin's settings: name -> (setting, owner as "variant NAME"). Imports the plugins."""
    from .config import FIELDS

    out: dict[str, tuple[Setting, str]] = {}
    for kind in ("variant", "measurement"):
        for name in plugins.names(kind):
            for key, setting in declared_by(kind, name).items():
                owner = f"{kind} {name}"
                if key in FIELDS or key in out:
                    other = "a built-in setting" if key in FIELDS else f"a setting of {out[key][1]}"
                    raise plugins.PluginError(
                        f"The {owner} plugin ({plugins.entries(kind)[name].value}) declares a setting {key!r}, "
                        f"which is already {other}. Rename it in that plugin (settings are one namespace).")
                out[key] = (setting, owner)
    return out


def lookup(key: str) -> Setting | None:
    """The plugin setting called ``key``, or None. Only a name that is no built-in setting imports plugins."""
    if not plugins.entries("variant") and not plugins.entries("measurement"):
        return None
    found = all_declared().get(key)
    return found[0] if found else None


def defaults_for(variant: str, measurement_names: tuple[str, ...]) -> dict[str, Any]:
    """The declared defaults of the settings of a trial's variant and measurements."""
    out: dict[str, Any] = {}
    for kind, names in (("variant", (variant,)), ("measurement", measurement_names)):
        for name in names:
            out.update({k: s.default for k, s in declared_by(kind, name).items()})
    return out
