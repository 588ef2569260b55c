"""The embedding cache: LRU bound in bytes in memory and on disk, disk persistence that makes reopening free."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.sam.embedding_cache import Embedding, EmbeddingCache, image_key
from SAMFusionLib.sam.segmenter import Segmenter


def _embedding(value: float, size: int = 16) -> Embedding:
    return Embedding(torch.full((1, 4, size, size), value), (64, 64), (64, 64))


def test_lru_evicts_least_recently_used_within_the_byte_bound():
    one = _embedding(0).nbytes
    cache = EmbeddingCache(max_bytes=2 * one)
    cache.put("a", _embedding(1))
    cache.put("b", _embedding(2))
    assert cache.get("a", "cpu") is not None  # "a" is now the most recent
    cache.put("c", _embedding(3))
    assert len(cache) == 2 and cache.nbytes == 2 * one
    assert cache.get("b", "cpu") is None
    assert float(cache.get("a", "cpu").features[0, 0, 0, 0]) == 1.0
    assert float(cache.get("c", "cpu").features[0, 0, 0, 0]) == 3.0


def test_key_depends_on_content_and_model():
    image = np.zeros((8, 8, 3), np.uint8)
    changed = image.copy()
    changed[3, 4, 1] = 1
    assert image_key("m1", image) != image_key("m1", changed)
    assert image_key("m1", image) != image_key("m2", image)
    assert image_key("m1", image) == image_key("m1", image.copy())
    assert image_key("m1", image) != image_key("m1", np.zeros((4, 16, 3), np.uint8))


def test_disk_cache_survives_a_new_session_without_encoding(tiny_model, tmp_path, monkeypatch):
    rgb = (np.random.default_rng(3).random((100, 140, 3)) * 255).astype(np.uint8)
    first = Segmenter(tiny_model, cache=EmbeddingCache(disk_dir=tmp_path))
    first.set_image(rgb)
    expected = first.predict(points_xy=[[70, 50]], labels=[1]).all_low_res_logits
    assert len(list(tmp_path.rglob("*.pt"))) == 1

    def no_encoder(*_args, **_kwargs):
        raise AssertionError("the encoder ran although the embedding was on disk")

    second = Segmenter(tiny_model, cache=EmbeddingCache(disk_dir=tmp_path))
    monkeypatch.setattr(second, "_encode", no_encoder)
    second.set_image(rgb)
    assert second.cache.hits == 1
    np.testing.assert_array_equal(second.predict(points_xy=[[70, 50]], labels=[1]).all_low_res_logits, expected)


def test_damaged_disk_entry_is_a_miss(tmp_path):
    cache = EmbeddingCache(disk_dir=tmp_path)
    cache.put("abcd", _embedding(5))
    path = next(tmp_path.rglob("*.pt"))
    path.write_bytes(b"not a torch file")
    assert EmbeddingCache(disk_dir=tmp_path).get("abcd", "cpu") is None
    assert not path.exists()


def _disk_files(folder) -> set[str]:
    return {path.stem for path in folder.rglob("*.pt")}


def test_disk_cache_keeps_the_most_recently_used_within_its_bound(tmp_path):
    one = tmp_path / "probe"
    EmbeddingCache(disk_dir=one, max_disk_bytes=1 << 30).put("probe", _embedding(0))
    file_bytes = next(one.rglob("*.pt")).stat().st_size
    folder = tmp_path / "cache"
    # Room for two files: the third write removes the least recently used one.
    writer = EmbeddingCache(disk_dir=folder, max_disk_bytes=2 * file_bytes + file_bytes // 2)
    writer.put("a1", _embedding(1))
    writer.put("b2", _embedding(2))
    old = time.time() - 60
    for path in folder.rglob("*.pt"):
        os.utime(path, (old, old))
    # A fresh reader (the memory layer empty) reads "a1" from disk, which makes it the more recent.
    assert EmbeddingCache(disk_dir=folder, max_disk_bytes=writer.max_disk_bytes).get("a1", "cpu") is not None
    writer.put("c3", _embedding(3))
    assert _disk_files(folder) == {"a1", "c3"}
    assert sum(p.stat().st_size for p in folder.rglob("*.pt")) <= writer.max_disk_bytes


def test_disk_cache_bound_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMFUSION_EMBEDDING_CACHE_MB", "0")
    cache = EmbeddingCache(disk_dir=tmp_path)
    cache.put("a1", _embedding(1))
    assert cache.get("a1", "cpu") is not None  # still served from memory
    assert _disk_files(tmp_path) == set()  # nothing kept on disk
    for bad in ("-1", "lots", "nan", "inf"):
        monkeypatch.setenv("SAMFUSION_EMBEDDING_CACHE_MB", bad)
        with pytest.raises(SamFusionError, match=r"^SAMFUSION_EMBEDDING_CACHE_MB=.* is not a size in megabytes"):
            EmbeddingCache(disk_dir=tmp_path)


def test_a_second_segment_command_reuses_the_embedding_from_disk(tmp_path, monkeypatch):
    """`samfusion segment` twice on one image in fresh processes: the second never runs the encoder
    and writes the same mask; `--no-embedding-cache` leaves the cache folder alone."""
    import cv2

    cache = tmp_path / "cache"
    env = {**os.environ, "SAMFUSION_CACHE_DIR": str(cache)}
    image = np.zeros((90, 120), np.uint8)
    cv2.circle(image, (60, 45), 20, 200, -1)
    cv2.imwrite(str(tmp_path / "disc.png"), image)
    # The child counts encoder runs by wrapping Segmenter._encode before the command runs.
    child = (
        "import sys; from SAMFusionLib.sam import segmenter as s; runs = []; original = s.Segmenter._encode\n"
        "s.Segmenter._encode = lambda self, *a: runs.append(1) or original(self, *a)\n"
        "from SAMFusionLib.cli.main import main; code = main(sys.argv[1:]); print('encoder runs', len(runs)); sys.exit(code)\n"
    )

    def segment(out: str, *extra: str) -> str:
        done = subprocess.run([sys.executable, "-c", child, "segment", str(tmp_path / "disc.png"), "--model", "samfusion-demo",
                               "--point", "60", "45", "--zoom", "off", "--out", str(tmp_path / out), *extra],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "encoder runs 1" in segment("first.png", "--no-embedding-cache")
    assert not cache.joinpath("embeddings").exists() or _disk_files(cache / "embeddings") == set()
    assert "encoder runs 1" in segment("second.png")
    assert len(_disk_files(cache / "embeddings")) == 1
    assert "encoder runs 0" in segment("third.png")
    first, third = (cv2.imread(str(tmp_path / name), cv2.IMREAD_GRAYSCALE) for name in ("first.png", "third.png"))
    assert (first > 0).sum() > 500
    np.testing.assert_array_equal(first, third)
