"""Checks that a sweep can run, made before anything is created.

``launch``, ``resume`` and debug mode call these first: a sweep that cannot run
fails with one paragraph naming the problem and the fix, and leaves no MLflow
experiment, no storage folder and no FAILED run behind. What is checked:

* the number of trials (:data:`MAX_TRIALS` unless the user raises the limit),
  counted before the grid is expanded (see :func:`robustsweep.sweep.count_trials`);
* ``storage_path``: a local folder that can be created and written, or a
  cloud URI whose bucket answers;
* the MLflow tracking server, with a real API call (``tracking.check_server``);
* the datasets, when this machine is where the trials read them (local Ray or
  debug mode): present, or downloaded here once, so concurrent trials never
  race to download into the same folder;
* the resources one trial asks for against the Ray cluster's nodes
  (:func:`check_resources`, after Ray is up).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from .errors import ConfigError, DataError, UserError

#: Trials one sweep may expand to unless raised with --max-trials (a 10^6-trial grid takes minutes
#: and gigabytes just to validate; no study needs more than a few thousand).
MAX_TRIALS = 100_000


def resolve_folder(path: str | os.PathLike, what: str = "storage_path") -> str:
    """``path`` made absolute with its links followed; a link loop is a ConfigError (not a traceback)."""
    try:
        return str(Path(path).resolve())
    except (RuntimeError, OSError) as exc:  # Python 3.11: RuntimeError("Symlink loop ..."); later: OSError ELOOP
        raise ConfigError(
            f"The sweep's {what} {path} cannot be resolved ({exc}): a symbolic link on that path points back "
            f"at itself, directly or through other links. Fix or remove the link (`ls -l` each folder of the "
            f"path), or set {what} to another folder.") from None


def check_storage(storage_path: str) -> None:
    """Fail unless ``storage_path`` can hold Ray's experiment state and checkpoints."""
    if "://" in storage_path:
        from pyarrow import fs

        try:
            filesystem, root = fs.FileSystem.from_uri(storage_path)
            filesystem.get_file_info(root)
        except Exception as exc:  # pyarrow raises OSError/ArrowInvalid for bad URIs, credentials, network
            raise UserError(
                f"The sweep's storage_path {storage_path} cannot be reached ({str(exc).splitlines()[0]}). Check "
                "the bucket name, this machine's credentials for it and its network access, or set storage_path "
                "to a local folder (one machine) or a shared file system (NFS) path."
            ) from None
        return
    path = Path(storage_path)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"The sweep's storage_path {path} cannot be created: {existing} is a file, not a folder. "
                        "Set storage_path to a folder (it is created when missing).")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"The sweep's storage_path {path} cannot be written: {existing} is not writable by this "
                        "user. Set storage_path to a folder you can write, or fix its permissions.")
    check_free_space(storage_path)


#: Free space a local storage_path must have for a launch or resume, and below which a running sweep
#: stops before the disk fills (ROBUSTSWEEP_MIN_FREE_MB): checkpoints (two per trial), Ray's state files.
DEFAULT_MIN_FREE_MB = 512


def min_free_bytes() -> int:
    try:
        return int(float(os.environ.get("ROBUSTSWEEP_MIN_FREE_MB", DEFAULT_MIN_FREE_MB)) * 2**20)
    except ValueError:
        return DEFAULT_MIN_FREE_MB * 2**20


def free_bytes(storage_path: str) -> int | None:
    """Free bytes on a local storage_path's file system (its nearest existing folder); None for cloud storage."""
    import shutil

    if "://" in storage_path:
        return None
    existing = Path(storage_path)
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_free_space(storage_path: str) -> None:
    free, need = free_bytes(storage_path), min_free_bytes()
    if free is not None and free < need:
        raise UserError(
            f"The sweep's storage_path {storage_path} has {free / 2**20:.0f} MB free, less than the {need / 2**20:.0f} MB "
            "a sweep needs for its checkpoints and Ray's experiment state (ROBUSTSWEEP_MIN_FREE_MB). Free space on "
            "that disk (old ray_results, mlartifacts) or set storage_path to a folder on another disk; nothing "
            "was started, and finished trials stay finished.")


def check_data(configs: Iterable[Any], *, local: bool) -> None:
    """Make sure every dataset the trials read is there (downloading it here once when allowed).

    ``local``: the trials run on this machine (local Ray, debug mode), so what this machine sees is
    what they see. On a cluster only a dataset that may not be downloaded and whose folder exists here
    is checked: the workers have disks of their own.
    """
    wanted = {(c.dataset, c.data_root, c.download, c.verify_checksums) for c in configs}
    if not wanted:
        return  # nothing left to run: torch is not even imported (several seconds)
    from .data import load_split

    for dataset, root, download, verify in sorted(wanted, key=str):
        if not local and (download or not Path(root).expanduser().exists()):
            continue
        try:
            load_split(dataset, root, train=False, download=download, verify_checksums=verify)
        except DataError as exc:
            raise DataError(f"{exc} Nothing was started.") from None


def check_trial_count(count: int, limit: int) -> None:
    if count > limit:
        raise ConfigError(
            f"The sweep expands to {count:,} trials, more than the limit of {limit:,}. Narrow its grid, or pass "
            f"--max-trials {count} if you mean it (each trial is a training run; expanding the grid alone "
            "takes memory in proportion)."
        )


def check_resources(demands: Iterable[dict[str, float]], *, autoscaling: bool) -> list[str]:
    """Check each per-trial demand ({"CPU": c, "GPU": g}) against the alive nodes of the Ray cluster.

    Raises UserError when some demand fits no node and nothing can add one; returns warnings when it
    fits no node yet but an autoscaler may add one.
    """
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    warnings = []
    for demand in {tuple(sorted(d.items())) for d in demands}:
        need = dict(demand)
        if any(all(node.get(k, 0.0) >= v for k, v in need.items() if v > 0) for node in nodes):
            continue
        have = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(n.items()) if k in ("CPU", "GPU")) or "none"
                         for n in nodes) or "no nodes"
        asked = ", ".join(f"{k} {v:g}" for k, v in sorted(need.items()) if v > 0)
        if autoscaling:
            warnings.append(f"no node has {asked} for one trial yet (nodes: {have}); trials wait for the "
                            "autoscaler to add one")
            continue
        raise UserError(
            f"Each trial asks for {asked}, but no node of this Ray cluster has that much (nodes: {have}), so "
            "every trial would wait forever. Lower the sweep's resources (e.g. resources: {gpu: 0} on a "
            "machine without a GPU), or launch on a cluster with such nodes (--address)."
        )
    return warnings


def local_gpu_count() -> int:
    """GPUs this machine's torch sees (0 without CUDA); imports torch, so asked only when a sweep wants GPUs."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
