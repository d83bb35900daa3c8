"""Files under a sweep's storage path (a local folder, or s3:// / gs:// through pyarrow), and the
record of which process drives a sweep, so that `status` can tell running trials from interrupted ones.

The driver record (``robustsweep-driver.json``: host, pid, the process's start time) exists while
``launch`` or ``resume`` runs and is removed when it ends; one left behind by a killed driver names a
process that is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

DRIVER_FILE = "robustsweep-driver.json"


def storage_file(storage_path: str, *parts: str):
    """(pyarrow filesystem, path) for a file under a local folder or an s3:// / gs:// storage path."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(storage_path if "://" in storage_path
                                              else Path(storage_path).resolve().as_uri())
    return filesystem, "/".join([root.rstrip("/"), *parts])


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell it from a later one with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, ticks: str | None) -> bool:
    if ticks is not None and Path("/proc").is_dir():
        return _start_ticks(pid) == ticks
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def driver_record(storage_path: str, name: str) -> Iterator[None]:
    """Record this process as the sweep's driver while the block runs; a clean exit removes the record."""
    filesystem, path = storage_file(storage_path, name, DRIVER_FILE)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    with filesystem.open_output_stream(path) as out:
        out.write(json.dumps(record).encode())
    try:
        yield
    finally:
        try:
            filesystem.delete_file(path)
        except OSError:
            pass


def driver_state(storage_path: str, name: str) -> str:
    """'live' (the driver runs on this host), 'gone' (no driver), or 'elsewhere (host H, pid P)'."""
    filesystem, path = storage_file(storage_path, name, DRIVER_FILE)
    try:
        with filesystem.open_input_stream(path) as stream:
            record = json.loads(stream.read())
    except (OSError, ValueError):
        return "gone"
    if record.get("host") != socket.gethostname():
        return f"elsewhere (host {record.get('host')}, pid {record.get('pid')})"
    return "live" if _alive(int(record["pid"]), record.get("start_ticks")) else "gone"
