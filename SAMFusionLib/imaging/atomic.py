"""Atomic outputs: nothing half-written is ever left at a destination, and a failure leaves every
file that was there before byte for byte as it was.

- ``atomic_path``: one file, written under a temporary name beside it and renamed at the end;
- ``output_files``: several files of one command, committed together only when all are written;
- ``staged_folder``: a folder of outputs, built beside its destination and moved in at the end;
- ``locked_folder``: one writer at a time for an output folder;
- ``deferred_interrupts``: SIGINT/SIGTERM held off while a commit renames files into place.

Temporary files get the mode the user's umask gives a new file (``mkstemp`` makes them 0600).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from SAMFusionLib.errors import SamFusionError

# Destinations committed in this process: an interrupt after a commit finds its outputs complete.
_committed: list[Path] = []


def committed() -> list[Path]:
    """The files and folders committed by ``output_files`` and ``staged_folder`` in this process."""
    return list(_committed)


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool = False) -> None:
    """Give a temporary file (or folder) the mode a plainly created one would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def check_writable_folder(folder: Path, what: str = "output folder") -> Path:
    """Raise a one-line error unless a file can be created in ``folder`` (it exists, is a folder, and
    neither permissions, an immutable flag nor a read-only filesystem forbid it). Creates and removes
    one hidden probe file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SamFusionError(f"{what} does not exist: {folder}")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".samfusion-probe.")
    except OSError as error:
        raise SamFusionError(f"cannot write to {what} {folder}: {error.strerror}") from None
    os.close(fd)
    os.unlink(probe)
    return folder


@contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM until the block ends (a commit must not stop half-way).

    Yields the list of signals that arrived meanwhile; after the block, the caller decides (the
    outputs are complete by then). Outside the main thread, signals cannot be handled and the block
    runs as is.
    """
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    previous = {sig: signal.signal(sig, lambda number, frame: arrived.append(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield arrived
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _temporary_beside(path: Path, suffix: str) -> Path:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as error:
        raise SamFusionError(f"cannot write {path}: {error.strerror}") from None
    os.close(fd)
    _publish_mode(Path(tmp))
    return Path(tmp)


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (hidden, same folder); rename it onto ``path`` when the
    block succeeds, delete it when the block raises. ``suffix`` lets writers pick a format by extension."""
    path = Path(path)
    tmp = _temporary_beside(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def suffix_of(path: Path) -> str:
    """A file's type as writers and readers pick it: its lower-case suffix, ``.nii.gz`` whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(path).suffix.lower()


@contextmanager
def output_files(*paths: Path | None) -> Iterator[list[Path | None]]:
    """Temporary paths for a command's output files, committed together.

    Yields one temporary path per given path (None stays None), each beside its destination and with
    its suffix. Only when the block succeeds are they all renamed into place, with interrupts held
    off; if the block raises, they are deleted and every destination keeps what it had before.
    """
    destinations = [None if p is None else Path(p) for p in paths]
    temporaries: list[Path | None] = []
    try:
        for destination in destinations:
            temporaries.append(None if destination is None else _temporary_beside(destination, suffix_of(destination)))
        yield temporaries
        with deferred_interrupts():
            for index, tmp in enumerate(temporaries):
                if tmp is not None:
                    os.replace(tmp, destinations[index])
                    _committed.append(destinations[index])
    finally:
        for tmp in temporaries:
            if tmp is not None:
                tmp.unlink(missing_ok=True)


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out``; when the block succeeds, its files move into
    ``out`` (the whole folder is renamed when ``out`` does not exist yet), with interrupts held off
    meanwhile. The staging folder is always removed, so a failed or interrupted block leaves nothing
    behind, and ``out`` keeps what it had."""
    out = Path(out)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    except OSError as error:
        raise SamFusionError(f"cannot write beside {out}: {error.strerror}") from None
    _publish_mode(staging, directory=True)
    try:
        yield staging
        with deferred_interrupts():
            if not out.exists():
                os.replace(staging, out)
            else:
                for path in staging.iterdir():
                    if path.is_dir() and (out / path.name).is_dir():
                        shutil.rmtree(out / path.name)
                    os.replace(path, out / path.name)
            _committed.append(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def locked_folder(out: Path) -> Iterator[None]:
    """Hold an exclusive lock for writing the folder ``out`` (which need not exist yet).

    The lock is ``flock`` on a hidden file beside ``out``, so it is released by the kernel if the
    process dies. A second writer is refused at once with a one-line error rather than mixing its
    outputs with the first's. The lock file is removed when the block ends.
    """
    out = Path(out).resolve()
    lock_path = out.parent / f".{out.name}.samfusion-lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as error:
            raise SamFusionError(f"cannot write beside {out}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SamFusionError(f"{out} is being written by another samfusion command; wait for it or choose another --out") from None
            raise
        # The previous holder may have removed the file between our open and our lock: then the lock
        # is on a file nobody else can see, so take it again on the current one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)
