"""
Atomic, crash-safe file replacement.

Durable state (leases, CA store, name records) must survive a C{kill -9} at
any moment: a reader finds either the old complete file or the new complete
file, never a torn one.  We write a temporary file in the same directory,
C{fsync} it, C{rename} it over the target and C{fsync} the directory so the
rename itself is on disk.
"""

from __future__ import annotations

import os
import tempfile


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """
    Replace C{path} with C{data} atomically and durably.

    @param path: the file to replace (its directory must exist).
    @param data: the complete new content.
    @param mode: permission bits of the new file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str) -> None:
    """Make a rename or create inside C{directory} durable."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def ensure_private_directory(path: str) -> None:
    """Create C{path} (and parents) if missing, readable by its owner only."""
    os.makedirs(path, mode=0o700, exist_ok=True)
