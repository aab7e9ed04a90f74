"""Output folders: fail before the work, not after it, when a folder cannot be written.

- `check_writable(folder, what)`: create the folder and write + remove a probe file in it; a
  read-only folder, a missing permission, a path through a regular file or a full disk raise
  `OutputFolderError` naming the folder, what it is for and the reason.
- `output_error(err, path, what)`: the same clear error for an OSError met while writing `path`
  later on (e.g. the disk filled up during a run).
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file of that name is in the way",
}


class OutputFolderError(OSError):
    """An output folder or file cannot be written (read-only, no permission, disk full, ...)."""


def _reason(err: OSError) -> str:
    hint = HINTS.get(err.errno)
    text = err.strerror or str(err)
    return f"{text}; {hint}" if hint and hint.lower() not in text.lower() else text


def output_error(err: OSError, path, what: str = "output") -> OutputFolderError:
    """An OutputFolderError for `err` met while writing `path` (raise it `from err`)."""
    return OutputFolderError(err.errno, f"{what}: cannot write {path}: {_reason(err)}")


def check_writable(folder, what: str = "output folder") -> Path:
    """Make `folder` (and parents) and prove a file can be written in it; returns it as a Path."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=str(folder))
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise OutputFolderError(err.errno, f"{what}: cannot write to {folder}: {_reason(err)}") from err
    return folder
