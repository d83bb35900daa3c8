"""A new SQLite store filled in bulk (``robustsweep import`` on a fresh machine): built beside its final path
without waiting for the disk, then moved into place whole.

SQLite's durability costs a bulk write most of its time: MLflow commits about ten times a run, and each commit
of a rollback journal waits for several fsyncs (issue 23: about half of import's wall time). Those waits
protect data that already exists. A store that does not exist yet has none: it is built in a file of its own
(``.NAME.importing-PID-RANDOM`` beside it) with ``synchronous=OFF`` and the journal in memory, flushed to disk
once, and linked to its final name only when complete. An error leaves no store at all, never half of one (the
partial file is removed; one that a killed import left is removed by the next). A store that appeared
meanwhile (another process created it) is never overwritten: the build is dropped and the import says to run
again, which then writes into that store the usual way. An existing store is always written the usual way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from .errors import TrackingError


def _new_sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store that does not exist yet, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):])
    return None if path.exists() or not path.parent.is_dir() else path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_killed_builds(final: Path) -> None:
    """Partial builds of ``final`` whose import process no longer runs (killed before it could remove them)."""
    for leftover in final.parent.glob(f".{final.name}.importing-*"):
        try:
            pid = int(leftover.name[len(f".{final.name}.importing-"):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass  # not ours to judge: another user's process, or not a name we write


@contextlib.contextmanager
def built_aside(uri: str) -> Iterator[str]:
    """The store URI to write to in the block: for a SQLite store that does not exist yet, a file beside it
    written without fsync and linked to the final name when the block ends without error; else ``uri``."""
    final = _new_sqlite_file(uri)
    if final is None:
        yield uri
        return
    # a name of its own per build: MLflow keeps one store object per URI for the process's life, whose
    # connections would still point at an earlier build's removed file
    building = final.resolve().with_name(f".{final.name}.importing-{os.getpid()}-{secrets.token_hex(4)}")
    _remove_killed_builds(final)
    try:
        with without_waiting(building):
            yield f"sqlite:///{building}"
        _fsync(building)
        try:
            os.link(building, final)  # never replaces a store that appeared meanwhile
        except FileExistsError:
            raise TrackingError(f"The MLflow store {final} was created by another process while this import built "
                                "it: nothing was written to it. Run the import again: it writes into that store "
                                "and skips the trials that already have a FINISHED run there.") from None
        _fsync(final.parent)
    finally:
        for leftover in (building, building.with_name(building.name + "-journal")):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def without_waiting(building: Path) -> Iterator[None]:
    """In the block, this process's new connections to the SQLite file ``building`` neither fsync nor write their
    journal to disk (``synchronous=OFF``, ``journal_mode=MEMORY``): only for a file :func:`built_aside` builds,
    which is discarded whole if anything fails."""
    import sqlalchemy

    path = os.path.realpath(building)

    def no_waiting(connection, _record) -> None:  # SQLAlchemy's "connect" listener signature
        if type(connection).__module__.startswith("sqlite3"):
            files = {os.path.realpath(row[2]) for row in connection.execute("PRAGMA database_list") if row[2]}
            if path in files:
                connection.execute("PRAGMA synchronous=OFF")
                connection.execute("PRAGMA journal_mode=MEMORY")

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", no_waiting)
    try:
        yield
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", no_waiting)
