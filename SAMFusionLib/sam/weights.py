"""Weights files: cache directory, checksum-verified download with progress, offline import.

The cache lives in ``$SAMFUSION_CACHE_DIR`` (default ``~/.cache/samfusion``). Every file is
written to a temporary name first and renamed only after its SHA256 is verified, so an
interrupted download or a corrupt file never takes the place of a good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from SAMFusionLib.errors import Cancelled, SamFusionError
from SAMFusionLib.imaging.atomic import atomic_path

CHUNK_BYTES = 1 << 20


def cache_dir() -> Path:
    """The root of SAMFusion's cache (weights, embeddings), created on demand."""
    root = Path(os.environ.get("SAMFUSION_CACHE_DIR") or Path.home() / ".cache" / "samfusion")
    root.mkdir(parents=True, exist_ok=True)
    return root


def weights_dir() -> Path:
    path = cache_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    """Hex SHA256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _pins_path() -> Path:
    return weights_dir() / "pinned_sha256.json"


def pinned_sha256(model_id: str) -> str | None:
    """The hash recorded on first download/import for a model whose table entry has none."""
    path = _pins_path()
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(model_id)


def _pin_sha256(model_id: str, digest: str) -> None:
    path = _pins_path()
    pins = json.loads(path.read_text()) if path.exists() else {}
    pins[model_id] = digest
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(pins, indent=2, sort_keys=True))


def download_file(url: str, destination: Path, expected_sha256: str | None, show_progress: bool = True,
                  progress: Callable[[int, int | None], None] | None = None, cancelled: Callable[[], bool] | None = None) -> str:
    """Download ``url`` to ``destination`` via a temporary file; verify and return its SHA256.

    ``progress(bytes so far, total bytes or None)`` is called after each block; ``cancelled()``
    is asked before each block, and True raises ``Cancelled``. Raises SamFusionError when offline,
    on an HTTP error, or on a checksum mismatch. In every error case (and on a cancel)
    ``destination`` is left as it was and no temporary file remains.
    """
    from tqdm import tqdm

    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with atomic_path(destination, ".part") as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name, disable=not show_progress) as bar:
                    done = 0
                    for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                        if cancelled is not None and cancelled():
                            raise Cancelled(f"download of {destination.name} cancelled")
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            actual = digest.hexdigest()
            if expected_sha256 and actual != expected_sha256.lower():
                raise SamFusionError(
                    f"checksum mismatch for {url}: expected SHA256 {expected_sha256}, got {actual}; the file was discarded"
                )
        return actual
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        raise SamFusionError(
            f"cannot download {url} ({reason}); if this machine is offline, fetch the file elsewhere and "
            f"import it with 'samfusion weights import MODEL FILE' or pass --checkpoint FILE"
        ) from None


def ensure_cached(model_id: str, url: str | None, filename: str, expected_sha256: str | None, show_progress: bool = True,
                  progress: Callable[[int, int | None], None] | None = None, cancelled: Callable[[], bool] | None = None) -> Path:
    """Return the verified cached weights of a table model, downloading them when needed.

    A cached file whose hash does not match is downloaded again. A model without a published hash
    is pinned to the hash of its first download or import (trust on first use).
    """
    path = weights_dir() / filename
    expected = expected_sha256 or pinned_sha256(model_id)
    if path.exists():
        if expected is None or sha256_file(path) == expected:
            return path
    if not url:
        raise SamFusionError(f"model {model_id!r} is not cached and has no download URL; import it with 'samfusion weights import'")
    actual = download_file(url, path, expected, show_progress, progress, cancelled)
    if expected is None:
        _pin_sha256(model_id, actual)
    return path


def import_file(model_id: str, source: Path, filename: str, expected_sha256: str | None) -> Path:
    """Copy an offline-obtained checkpoint into the cache after verifying its SHA256."""
    source = Path(source)
    if not source.is_file():
        raise SamFusionError(f"checkpoint file not found: {source}")
    actual = sha256_file(source)
    expected = expected_sha256 or pinned_sha256(model_id)
    if expected and actual != expected:
        raise SamFusionError(f"{source} is not the {model_id} checkpoint: expected SHA256 {expected}, got {actual}")
    destination = weights_dir() / filename
    with atomic_path(destination, ".part") as tmp:
        shutil.copyfile(source, tmp)
    if expected is None:
        _pin_sha256(model_id, actual)
    return destination
