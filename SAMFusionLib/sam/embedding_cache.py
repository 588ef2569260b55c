"""An LRU cache of SAM image embeddings, bounded in bytes, optionally persisted on disk.

Key: the model's fingerprint plus a hash of the exact uint8 RGB image fed to SAM. That image is
derived from the source image's content, the slice index and the intensity window, so the key
covers all of them, and two identical slices correctly share one embedding.

On disk the folder is bounded too (``max_disk_bytes``; ``$SAMFUSION_EMBEDDING_CACHE_MB``, default
2048, 0 keeps nothing): after each write the least recently used files (a read refreshes a file's
time) are removed until the folder fits.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.atomic import atomic_path


@dataclass
class Embedding:
    """What ``SamPredictor`` keeps after ``set_image``.

    Attributes:
        features: (1, C, h, w) float tensor, the image encoder output.
        input_size: (H', W') of the resized image before padding.
        original_size: (H, W) of the image given to SAM.
    """

    features: Any
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return int(self.features.element_size() * self.features.nelement())


def image_key(model_fingerprint: str, rgb: np.ndarray) -> str:
    """Cache key of an (H, W, 3) uint8 image for a model."""
    digest = hashlib.sha1(model_fingerprint.encode())
    digest.update(str(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).data)
    return digest.hexdigest()


DEFAULT_DISK_MB = 2048


def disk_limit_bytes() -> int:
    """The disk cache's bound: ``$SAMFUSION_EMBEDDING_CACHE_MB`` megabytes (default 2048)."""
    text = os.environ.get("SAMFUSION_EMBEDDING_CACHE_MB", str(DEFAULT_DISK_MB))
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not (megabytes >= 0 and math.isfinite(megabytes)):  # NaN fails both
        raise SamFusionError(f"SAMFUSION_EMBEDDING_CACHE_MB={text!r} is not a size in megabytes (0 or more)")
    return int(megabytes * 2**20)


class EmbeddingCache:
    """LRU in memory (at most ``max_bytes``), with an optional folder that survives restarts (at most
    ``max_disk_bytes``; ``disk_limit_bytes()`` when None)."""

    def __init__(self, max_bytes: int = 1 << 30, disk_dir: Path | None = None, max_disk_bytes: int | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.max_disk_bytes = (disk_limit_bytes() if max_disk_bytes is None else int(max_disk_bytes)) if disk_dir else 0
        self._items: OrderedDict[str, Embedding] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str, device: str) -> Embedding | None:
        """The embedding for ``key`` on ``device``, from memory or disk, or None."""
        item = self._items.get(key)
        if item is None and self.disk_dir is not None:
            item = self._read_disk(key, device)
            if item is not None:
                self._remember(key, item)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: str, embedding: Embedding) -> None:
        self._remember(key, embedding)
        if self.disk_dir is not None:
            self._write_disk(key, embedding)

    def _remember(self, key: str, embedding: Embedding) -> None:
        if key in self._items:
            self._bytes -= self._items.pop(key).nbytes
        self._items[key] = embedding
        self._bytes += embedding.nbytes
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self._bytes -= dropped.nbytes

    def _path(self, key: str) -> Path:
        return self.disk_dir / key[:2] / f"{key}.pt"

    def _write_disk(self, key: str, embedding: Embedding) -> None:
        import torch

        path = self._path(key)
        if path.exists() or embedding.nbytes > self.max_disk_bytes:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "features": embedding.features.detach().cpu(),
            "input_size": list(embedding.input_size),
            "original_size": list(embedding.original_size),
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        self._prune_disk()

    def _prune_disk(self) -> None:
        """Remove the least recently used files until the folder holds at most ``max_disk_bytes``."""
        files = []
        for path in self.disk_dir.glob("*/*.pt"):
            try:
                status = path.stat()
            except FileNotFoundError:  # removed meanwhile by another process sharing the folder
                continue
            files.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_disk_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _read_disk(self, key: str, device: str) -> Embedding | None:
        import torch

        path = self._path(key)
        if not path.exists():
            return None
        try:
            payload = torch.load(path, weights_only=True, map_location=device)
        except FileNotFoundError:  # pruned by another process since the check
            return None
        except Exception:  # a damaged cache file is only a miss; it is rewritten on the next put
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):  # recently used: the last to be pruned (a read-only cache is still read)
            os.utime(path)
        return Embedding(payload["features"], tuple(payload["input_size"]), tuple(payload["original_size"]))
