"""Users' own variants, datasets, models and measurements, found through Python entry points.

A package adds one without editing robustsweep by declaring an entry point in one of the groups
below, ``name = "module:attribute"`` (pyproject.toml: ``[project.entry-points."robustsweep.variants"]``),
as pytest's and MLflow's plugins do. The entry's name is the name sweep files use. Entry points are
read without importing anything; a plugin's module is imported only when its name is used (or when
a command lists every choice, as ``robustsweep options`` does).

A plugin that fails to import, or whose name is a built-in one, is a :class:`PluginError`: one
paragraph naming the entry point and the package that declared it.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any, Callable

from .errors import UserError

#: Entry-point group of each registry.
GROUPS = {"variant": "robustsweep.variants", "dataset": "robustsweep.datasets", "model": "robustsweep.models",
          "measurement": "robustsweep.measurements"}


class PluginError(UserError):
    """An installed plugin cannot be used (it does not import, or it clashes with a built-in name)."""


def _package(entry: metadata.EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return f"package {dist.name} {dist.version}" if dist is not None else "an installed package"


@functools.lru_cache(maxsize=None)
def entries(kind: str) -> dict[str, metadata.EntryPoint]:
    """The plugins of one kind by name, read from the installed packages' metadata (nothing imported)."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=GROUPS[kind]):
        if entry.name in found and found[entry.name].value != entry.value:
            raise PluginError(
                f"Two installed packages declare a {kind} named {entry.name!r} in entry-point group "
                f"{GROUPS[kind]!r}: {_package(found[entry.name])} ({found[entry.name].value}) and "
                f"{_package(entry)} ({entry.value}). Uninstall one, or rename its entry point.")
        found[entry.name] = entry
    return found


def check_no_clash(kind: str, builtin: set[str] | dict[str, Any]) -> None:
    """Refuse a plugin named like a built-in: the sweep files that name it would be ambiguous."""
    for name, entry in entries(kind).items():
        if name in builtin:
            raise PluginError(
                f"The {kind} plugin {name!r} ({entry.value}, entry-point group {GROUPS[kind]!r}, from "
                f"{_package(entry)}) has the name of robustsweep's built-in {kind} {name!r}. Rename the entry "
                "point in that package's metadata (pyproject.toml) and reinstall it.")


def load(kind: str, name: str) -> Any:
    """Import the plugin ``name`` of ``kind`` and return its attribute; errors name the package."""
    entry = entries(kind)[name]
    try:
        return entry.load()
    except Exception as exc:  # any import-time failure of someone else's code
        raise PluginError(
            f"The {kind} plugin {name!r} ({entry.value}, entry-point group {GROUPS[kind]!r}, from "
            f"{_package(entry)}) failed to import: {type(exc).__name__}: {exc}. Fix or reinstall that package, "
            "or uninstall it if you do not need it.") from None


def find(kind: str, name: str, builtin: dict[str, Any], accept: Callable[[Any], bool], expected: str) -> Any:
    """The plugin ``name`` of ``kind`` (KeyError if none is installed), checked by ``accept``.

    ``builtin``: the registry's own names, which no plugin may take. ``expected`` says what the entry
    point must name (for the error when ``accept`` refuses what it gave).
    """
    check_no_clash(kind, builtin)
    if name not in entries(kind):
        raise KeyError(name)
    value = load(kind, name)
    if not accept(value):
        raise PluginError(
            f"The {kind} plugin {name!r} ({entries(kind)[name].value}, from {_package(entries(kind)[name])}) must "
            f"name {expected}; it gave {value!r}. Fix its entry point or its code.")
    return value


def names(kind: str) -> list[str]:
    return sorted(entries(kind))


def refresh() -> None:
    """Forget what was read of the installed packages (after installing a plugin into a running process)."""
    entries.cache_clear()
    from . import plugin_settings

    plugin_settings.all_declared.cache_clear()
