"""Atomic file writes: nothing half-written is ever left at the destination."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (hidden, same folder); rename it onto ``path`` when the
    block succeeds, delete it when the block raises. ``suffix`` lets writers pick a format by extension."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out``; when the block succeeds, its files move into
    ``out`` (the whole folder is renamed when ``out`` does not exist yet). The staging folder is
    always removed, so a failed block leaves nothing behind."""
    out = Path(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    try:
        yield staging
        if not out.exists():
            os.replace(staging, out)
        else:
            for path in staging.iterdir():
                os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
