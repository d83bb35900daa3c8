"""The expanded sweep saved beside Ray's experiment state (``<storage_path>/<name>/robustsweep-sweep.json``):
written by ``launch``, read back by ``resume``, ``status`` and the commands that take a sweep's name."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import UserError
from .preflight import resolve_folder
from .storage import storage_file
from .sweep import SAFE_NAME, SeedlessMemo, SweepOverrides, SweepSpec, Trial, load_sweep

if TYPE_CHECKING:
    from .search import Search

SWEEP_FILE = "robustsweep-sweep.json"
DEFAULT_STORAGE = "ray_results"


def _save_spec(spec: SweepSpec, text: bytes | None = None) -> None:
    """Write the expanded sweep next to Ray's experiment state (local folder or cloud storage); ``text``: its
    :func:`spec_json_bytes` when made already (a launch makes them while Ray starts: a second at 10,000 trials).

    Written to a temporary name, then renamed: an interrupted launch leaves the old file or none,
    never a truncated one.
    """
    text = spec_json_bytes(spec) if text is None else text
    filesystem, path = storage_file(spec.storage_path, spec.name, SWEEP_FILE)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    partial = f"{path}.{os.getpid()}.partial"
    with filesystem.open_output_stream(partial) as out:
        out.write(text)
    filesystem.move(partial, path)


def save_if_unsaved(spec: SweepSpec) -> bool:
    """Save the expanded sweep as launch does, unless a sweep of that name is saved there already (launched,
    or imported before): after ``import`` on a fresh machine, ``status``, ``report`` and ``audit`` take the
    sweep's name as they do after a launch. Whether it was written."""
    from pyarrow import fs

    filesystem, path = storage_file(spec.storage_path, spec.name, SWEEP_FILE)
    if filesystem.get_file_info(path).type != fs.FileType.NotFound:
        return False
    _save_spec(spec)
    return True


def spec_json_bytes(spec: SweepSpec) -> bytes:
    """The saved sweep's file (robustsweep-sweep.json) as written: its keys one a line, then one trial a line.
    Each trial goes through json's C encoder; ``indent`` would make json encode all in Python, 5 s for 10,000
    trials (issue 23)."""
    data = spec_to_json(spec)
    trials = data.pop("trials")
    head = json.dumps(data, indent=1)
    return (head[:-2] + ',\n "trials": [\n  ' + ",\n  ".join(map(json.dumps, trials)) + "\n ]\n}").encode()


def spec_to_json(spec: SweepSpec) -> dict[str, Any]:
    return {"name": spec.name, "source": spec.source, "storage_path": spec.storage_path,
            "tracking_uri": spec.tracking_uri, "experiment": spec.experiment, "max_concurrent": spec.max_concurrent,
            "max_failures": spec.max_failures, "flags": spec.flags, "trials": [t.to_json() for t in spec.trials],
            **({"search": spec.search.to_json()} if spec.search is not None else {})}


@dataclass
class SavedSweep:
    """What ``resume`` and ``status`` read back: the expanded sweep saved at launch.

    The trials are kept as saved (JSON) and made :class:`Trial` objects, each one validated, only when
    ``trials`` is first read: ``status`` needs only their ids (``trial_ids``), and validating 10,000 trials
    takes seconds.
    """

    name: str
    storage_path: str
    tracking_uri: str
    experiment: str
    max_concurrent: int
    max_failures: int
    saved_trials: list[dict[str, Any]] = field(repr=False)
    flags: str = ""
    #: the file and its size in bytes, for the message when a trial in it cannot be read
    where: tuple[str, int] = field(default=("", 0), repr=False)
    #: the sweep's search block as saved (robustsweep.search.Search.to_json), or None for a grid
    saved_search: dict[str, Any] | None = field(default=None, repr=False)

    @functools.cached_property
    def search(self) -> "Search | None":
        from .search import Search

        if self.saved_search is None:
            return None
        try:
            return Search.from_json(self.saved_search)
        except (ValueError, KeyError, TypeError) as exc:
            raise _unreadable(*self.where, exc) from None

    @property
    def experiment_dir(self) -> str:
        return self.storage_path.rstrip("/") + "/" + self.name

    @property
    def trial_ids(self) -> list[str]:
        return [t["trial_id"] for t in self.saved_trials]

    @functools.cached_property
    def trials(self) -> list[Trial]:
        try:
            made = SeedlessMemo()  # each combination of settings made once, copied for its other seeds
            return [Trial.from_json(t, made) for t in self.saved_trials]
        except (ValueError, KeyError, TypeError, UserError) as exc:
            raise _unreadable(*self.where, exc) from None


def _unreadable(path: str, size: int, exc: BaseException) -> UserError:
    return UserError(
        f"The saved sweep {path} is unreadable ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else 'incomplete'}; {size} bytes). `launch` writes it; "
        f"launch the sweep file again with the same name and storage: trials already FINISHED in MLflow are "
        f"not trained twice.")


def load_saved_sweep(name: str, storage_path: str | None = None) -> SavedSweep:
    if not SAFE_NAME.fullmatch(name):
        raise UserError(f"{name!r} is not a sweep name: sweep names are letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit (the `name:` key of the sweep file).")
    storage = storage_path or DEFAULT_STORAGE
    if "://" not in storage:
        storage = resolve_folder(storage)
    try:
        filesystem, path = storage_file(storage, name, SWEEP_FILE)
        with filesystem.open_input_stream(path) as stream:
            raw = stream.read()
    except (FileNotFoundError, OSError) as exc:
        raise UserError(
            f"No sweep named {name!r} under {storage} ({name}/{SWEEP_FILE} cannot be read: "
            f"{str(exc).splitlines()[0]}). Give the storage path the sweep was launched with (--storage-path), "
            f"or launch it first with `robustsweep launch SWEEP.yaml`."
        ) from None
    where = (f"{storage}/{name}/{SWEEP_FILE}", len(raw))
    try:
        data = json.loads(raw)
        trials = data["trials"]
        for t in trials:  # the shape of each trial here; its settings are validated when first used
            if not (isinstance(t["trial_id"], str) and isinstance(t["group"], str)
                    and isinstance(t["resources"], dict) and isinstance(t["settings"], dict)):
                raise TypeError(f"trial {t.get('trial_id')!r} is not a saved trial")
        return SavedSweep(data["name"], data["storage_path"], data["tracking_uri"], data["experiment"],
                          data["max_concurrent"], data["max_failures"], trials, data.get("flags", ""), where,
                          data.get("search"))
    except (ValueError, KeyError, TypeError, AttributeError, UserError) as exc:
        raise _unreadable(*where, exc) from None


@dataclass
class Resolved:
    """A sweep given by file or name: what the reading commands need. ``trials``: the grid's (a search's
    trials are known once sampled: their MLflow runs, robustsweep.search.searched_ids), built when first asked
    for (a saved sweep's 10,000 trials take seconds to rebuild, which a command that needs only the sweep's
    name and store does not spend); ``search``: its block."""

    name: str
    tracking_uri: str
    experiment: str
    storage_path: str
    load_trials: Callable[[], list[Trial]] = field(repr=False)
    search: "Search | None" = None
    spec: SweepSpec | None = field(default=None, repr=False)  # the sweep file's expansion (None for a name)

    @functools.cached_property
    def trials(self) -> list[Trial]:
        return self.load_trials()


def resolve(sweep: str, tracking_uri: str | None = None, storage_path: str | None = None,
            overrides: "SweepOverrides | None" = None) -> Resolved:
    """A sweep file, with the command line's ``overrides`` (the flags it was launched with), or a launched
    sweep given by name (which saved its flags)."""
    if sweep.endswith((".yaml", ".yml")) or Path(sweep).is_file():
        spec = load_sweep(sweep, overrides=overrides)
        return Resolved(spec.name, tracking_uri or spec.tracking_uri, spec.experiment, spec.storage_path,
                        lambda: list(spec.trials), spec.search, spec)
    if overrides is not None and overrides.flags():
        raise UserError(f"The flags {overrides.flags()} change a sweep file, but {sweep!r} names a launched sweep, "
                        "which keeps the flags it was launched with: drop them, or give the sweep file.")
    saved = load_saved_sweep(sweep, storage_path)
    return Resolved(saved.name, tracking_uri or saved.tracking_uri, saved.experiment, saved.storage_path,
                    lambda: saved.trials, saved.search)


def resolve_sweep(sweep: str, tracking_uri: str | None = None, storage_path: str | None = None,
                  overrides: "SweepOverrides | None" = None) -> tuple[str, str, str, list[Trial]]:
    """(name, tracking uri, experiment, the grid's trials) of a sweep file or name: see :func:`resolve`."""
    r = resolve(sweep, tracking_uri, storage_path, overrides)
    return r.name, r.tracking_uri, r.experiment, r.trials


def resolve_storage(sweep: str, storage_path: str | None = None,
                    overrides: "SweepOverrides | None" = None) -> str:
    """The storage path of a sweep file (with the command line's ``overrides``) or of a launched sweep's name."""
    return resolve(sweep, None, storage_path, overrides).storage_path

