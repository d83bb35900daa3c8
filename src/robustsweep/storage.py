"""Files under a sweep's storage path (a local folder, or s3:// / gs:// through pyarrow), and the
record of which process drives a sweep: one live driver per sweep, and `status` tells running trials
from interrupted ones.

The driver record (``robustsweep-driver.json``: host, pid, the process's start time, the command) is
created when ``launch``, ``resume`` or ``import`` starts and removed when it ends. It is created
atomically: written whole to a private name, then hard-linked to its real name, which fails when
the name exists (the O_EXCL rule, and safe on NFS too). A second driver of the same sweep therefore
finds the first one's record and refuses, naming it. A record left by a killed driver names a process
that is gone (a dead pid on this host, or a pid now used by a process with another start time): the
next driver takes it over, saying so. A record from another host (two heads sharing one
storage_path on NFS) cannot be checked from here: it is refused, with how to clear it. Taking a stale
record over happens under an exclusive ``flock`` of ``robustsweep-driver.lock``, so two drivers
never both replace it.

On cloud storage (s3://, gs://) there is no create-if-absent: the record is read, then written, two
requests, so two drivers started within the same second can both pass. Start each sweep from one
head node.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UserError

DRIVER_FILE = "robustsweep-driver.json"
LOCK_FILE = "robustsweep-driver.lock"


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


def _read_record(storage_path: str, name: str) -> dict[str, Any] | None:
    """The driver record, None when there is none; {} when it cannot be read."""
    filesystem, path = storage_file(storage_path, name, DRIVER_FILE)
    try:
        with filesystem.open_input_stream(path) as stream:
            raw = stream.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if "not found" in str(exc).lower() or "no such file" in str(exc).lower():
            return None
        return {}
    try:
        record = json.loads(raw)
        return record if isinstance(record, dict) and "pid" in record else {}
    except ValueError:
        return {}


def _verdict(record: dict[str, Any]) -> tuple[str, str]:
    """("live" | "stale" | "elsewhere", a description of the recorded driver)."""
    if not record:
        return "stale", "an unreadable driver record"
    who = (f"{record.get('command', 'a driver')} (pid {record.get('pid')} on host {record.get('host')}, "
           f"since {record.get('since', '?')})")
    if record.get("host") != socket.gethostname():
        return "elsewhere", who
    try:
        alive = _alive(int(record["pid"]), record.get("start_ticks"))
    except (TypeError, ValueError):
        return "stale", "an unreadable driver record"
    return ("live" if alive else "stale"), who


def _busy(name: str, storage_path: str, record: dict[str, Any]) -> UserError:
    verdict, who = _verdict(record)
    path = "/".join([storage_path.rstrip("/"), name, DRIVER_FILE])
    if verdict == "live":
        return UserError(f"Sweep {name!r} is already driven by {who}: a second driver would run its trials twice "
                         f"and delete the other's checkpoints. Wait for it to end (`robustsweep status {name}` shows "
                         f"its progress), or stop it with `kill {record.get('pid')}` and continue with "
                         f"`robustsweep resume {name}`.")
    return UserError(f"Sweep {name!r} is recorded as driven by {who}, another machine sharing this storage_path "
                     f"({path}); from here it cannot be told whether that driver still runs. If it does, run this "
                     f"command there, or wait for it to end. If it is gone (the machine was stopped or the "
                     f"driver killed), delete {path} and run the command again.")


def check_driver(storage_path: str, name: str) -> None:
    """Refuse (UserError) when another live driver, or one on another host, holds the sweep. Reads only."""
    record = _read_record(storage_path, name)
    if record is None:
        return
    if _verdict(record)[0] != "stale":
        raise _busy(name, storage_path, record)


def _own_record(command: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command}


def _create_exclusive(path: Path, record: dict[str, Any]) -> None:
    """Create ``path`` holding ``record``, whole, or raise FileExistsError: a link to a private file."""
    private = path.with_name(f"{path.name}.{os.getpid()}.new")
    private.write_text(json.dumps(record))
    try:
        os.link(private, path)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(str(path)) from None
        # A file system without hard links: O_EXCL itself (a reader may see it half written for a moment).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(record))
    finally:
        private.unlink(missing_ok=True)


def _claim_local(storage_path: str, name: str, record: dict[str, Any], log: Callable[[str], None]) -> None:
    import fcntl

    folder = Path(storage_path).resolve() / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DRIVER_FILE
    with open(folder / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one driver at a time decides about a stale record
        while True:
            try:
                _create_exclusive(path, record)
                return
            except FileExistsError:
                old = _read_record(storage_path, name)
                if old is None:
                    continue  # removed meanwhile by a driver that ended
                verdict, who = _verdict(old)
                if verdict != "stale":
                    raise _busy(name, storage_path, old) from None
                log(f"robustsweep: taking over sweep {name!r} from {who}: that process is no longer running "
                    f"(killed, or its machine restarted); its unfinished trials continue here")
                path.unlink(missing_ok=True)


def _claim_remote(storage_path: str, name: str, record: dict[str, Any], log: Callable[[str], None]) -> None:
    old = _read_record(storage_path, name)
    if old is not None:
        verdict, who = _verdict(old)
        if verdict != "stale":
            raise _busy(name, storage_path, old)
        log(f"robustsweep: taking over sweep {name!r} from {who}: that process is no longer running")
    filesystem, path = storage_file(storage_path, name, DRIVER_FILE)
    with filesystem.open_output_stream(path) as out:
        out.write(json.dumps(record).encode())


@contextlib.contextmanager
def driver_record(storage_path: str, name: str, command: str = "launch",
                  log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the sweep's driver record while the block runs, or raise UserError naming the driver that
    holds it; a stale record is taken over (``log`` says so). The record is removed at the end."""
    record = _own_record(command)
    claim = _claim_remote if "://" in storage_path else _claim_local
    claim(storage_path, name, record, log)
    try:
        yield
    finally:
        if _read_record(storage_path, name) == record:  # never remove a record that is not ours
            filesystem, path = storage_file(storage_path, name, DRIVER_FILE)
            try:
                filesystem.delete_file(path)
            except OSError:
                pass


def driver_state(storage_path: str, name: str) -> str:
    """'live' (the driver runs on this host), 'gone' (no driver), or 'elsewhere (host H, pid P)'."""
    record = _read_record(storage_path, name)
    if not record:
        return "gone"
    if record.get("host") != socket.gethostname():
        return f"elsewhere (host {record.get('host')}, pid {record.get('pid')})"
    return "live" if _verdict(record)[0] == "live" else "gone"
