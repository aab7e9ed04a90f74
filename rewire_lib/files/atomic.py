"""One crash-safe way to write a file: write a temporary sibling, then `os.replace` it over the target.

Why: a run killed mid-write (SIGKILL, full disk, a pre-empted cluster job) must leave either the old
file or the new one, never half a file that a resumed run then trusts. The temporary name carries the
process id, so two processes writing the same target never share a temporary file.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write to (with any writer: torch.save, soundfile,
    matplotlib); on success it replaces `path` in one step, on an error it is removed."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    # the real suffix is kept last so writers that pick a format from the name still see it
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` crash-safe; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` crash-safe; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 1, default=str) -> Path:
    """Write `obj` as JSON (non-JSON values through `default`) crash-safe; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")
