"""Model table, SHA256-verified download and import, checkpoint loading and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.sam.models import build_sam, load_model, load_table, resources_dir
from SAMFusionLib.sam.weights import download_file, ensure_cached, sha256_file, weights_dir


def test_table_has_official_models_with_checksums():
    table = load_table()
    for model_id in ("vit_b", "vit_l", "vit_h", "medsam_vit_b", "samfusion-demo", "lite_medsam", "samfusion-lite"):
        assert model_id in table.models
    assert table.default == "samfusion-lite"
    assert table.entry("vit_b").sha256 == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    assert table.entry("vit_h").url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
    assert table.entry("medsam_vit_b").architecture == "vit_b"
    with pytest.raises(SamFusionError, match="unknown model 'nope'"):
        table.entry("nope")


def test_vit_b_architecture_matches_segment_anything_builder():
    from segment_anything import sam_model_registry

    ours = build_sam(load_table().architectures["vit_b"]).state_dict()
    official = sam_model_registry["vit_b"]().state_dict()
    assert ours.keys() == official.keys()
    assert all(ours[k].shape == official[k].shape for k in ours)


@pytest.fixture
def tiny_checkpoint(tiny_model, tmp_path) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.sam.state_dict(), path)
    return path


def test_checkpoint_loads_with_inferred_architecture(tiny_checkpoint, tiny_model):
    model = load_model(checkpoint=tiny_checkpoint, device="cpu")
    assert model.architecture == "samfusion_tiny"
    assert model.fingerprint == sha256_file(tiny_checkpoint)
    for key, value in tiny_model.sam.state_dict().items():
        assert torch.equal(model.sam.state_dict()[key], value)


def test_training_style_checkpoint_with_model_key_loads(tiny_checkpoint, tmp_path):
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": torch.load(tiny_checkpoint, weights_only=True), "step": 3}, wrapped)
    assert load_model(checkpoint=wrapped, device="cpu").architecture == "samfusion_tiny"


def test_truncated_checkpoint_is_a_clear_error(tiny_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(SamFusionError, match="corrupt or truncated"):
        load_model(checkpoint=truncated, device="cpu")


def test_wrong_architecture_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(SamFusionError, match="does not fit architecture 'vit_b'"):
        load_model(checkpoint=tiny_checkpoint, architecture="vit_b", device="cpu")


def test_checkpoint_of_no_known_architecture(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["image_encoder.pos_embed"] = torch.zeros(1, 7, 7, 160)
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(SamFusionError, match="matches no known SAM architecture"):
        load_model(checkpoint=odd, device="cpu")


def test_missing_checkpoint_file():
    with pytest.raises(SamFusionError, match="checkpoint file not found"):
        load_model(checkpoint=Path("/nonexistent/model.pth"), device="cpu")


def test_download_verifies_sha256_and_redownloads_a_corrupt_cache(tiny_checkpoint):
    digest = sha256_file(tiny_checkpoint)
    url = tiny_checkpoint.as_uri()
    path = ensure_cached("test-model", url, "test-model.pth", digest, show_progress=False)
    assert sha256_file(path) == digest
    path.write_bytes(b"corrupted")
    again = ensure_cached("test-model", url, "test-model.pth", digest, show_progress=False)
    assert sha256_file(again) == digest


def test_checksum_mismatch_leaves_nothing(tiny_checkpoint):
    destination = weights_dir() / "mismatch.pth"
    with pytest.raises(SamFusionError, match="checksum mismatch"):
        download_file(tiny_checkpoint.as_uri(), destination, "0" * 64, show_progress=False)
    assert not destination.exists()
    assert not list(weights_dir().glob(".mismatch.pth*"))


def test_a_download_on_a_worker_thread_reports_progress_and_can_be_cancelled(tmp_path):
    """What the Slicer panel's Download button runs: the fetch on a worker thread, the GUI thread
    polling its progress; a cancel stops it between blocks and leaves no file."""
    import time

    from SAMFusionLib.background import BackgroundJob
    from SAMFusionLib.errors import Cancelled

    source = tmp_path / "big.pth"
    source.write_bytes(np.random.default_rng(0).integers(0, 255, 5 << 20, dtype=np.uint8).tobytes())  # 5 blocks of 1 MiB
    digest = sha256_file(source)
    seen = []

    def fetch(progress, cancelled):
        return ensure_cached("thread-model", source.as_uri(), "thread-model.pth", digest, False,
                             lambda done, total: (seen.append((done, total)), progress(done, total)), cancelled)

    job = BackgroundJob(fetch)
    path = job.result(timeout=60)
    assert job.done() and job.fraction == 1.0 and sha256_file(path) == digest
    assert [done for done, _ in seen] == [1 << 20, 2 << 20, 3 << 20, 4 << 20, 5 << 20] and {total for _, total in seen} == {5 << 20}

    def held_until_cancelled(progress, cancelled):
        deadline = time.monotonic() + 30
        while not cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        return download_file(source.as_uri(), weights_dir() / "cancelled.pth", digest, False, progress, cancelled)

    job = BackgroundJob(held_until_cancelled)
    assert not job.done()  # running on its thread while this one goes on
    job.cancel()
    with pytest.raises(Cancelled, match="download of cancelled.pth cancelled"):
        job.result(timeout=60)
    assert not (weights_dir() / "cancelled.pth").exists() and not list(weights_dir().glob(".cancelled.pth*"))


def test_offline_download_says_how_to_import():
    with pytest.raises(SamFusionError, match="samfusion weights import"):
        ensure_cached("offline-model", "http://127.0.0.1:9/none.pth", "offline.pth", "0" * 64, show_progress=False)
    assert not (weights_dir() / "offline.pth").exists()


def test_import_verifies_and_pins(tiny_checkpoint, tmp_path, monkeypatch):
    table_dir = tmp_path / "resources"
    shutil.copytree(resources_dir(), table_dir, ignore=shutil.ignore_patterns("*.pth"))
    table = json.loads((table_dir / "models.json").read_text())
    table["models"].append({"id": "mine", "title": "test", "architecture": "samfusion_tiny", "url": None,
                            "filename": "mine.pth", "sha256": sha256_file(tiny_checkpoint)})
    table["models"].append({"id": "unpinned", "title": "test", "architecture": "samfusion_tiny", "url": None,
                            "filename": "unpinned.pth", "sha256": None})
    (table_dir / "models.json").write_text(json.dumps(table))
    monkeypatch.setenv("SAMFUSION_RESOURCES", str(table_dir))
    from SAMFusionLib.sam.models import import_weights

    import_weights("mine", tiny_checkpoint)
    assert load_model("mine", device="cpu").architecture == "samfusion_tiny"
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"x" * 100)
    with pytest.raises(SamFusionError, match="is not the mine checkpoint"):
        import_weights("mine", wrong)
    import_weights("unpinned", tiny_checkpoint)  # trust on first use: the hash is pinned now
    with pytest.raises(SamFusionError, match="is not the unpinned checkpoint"):
        import_weights("unpinned", wrong)


def test_gpu_saved_checkpoint_loads_on_cpu(tiny_model, tmp_path):
    """A checkpoint whose tensors were saved from CUDA must load with map_location on a CPU machine."""
    if torch.cuda.is_available():
        state = {k: v.cuda() for k, v in tiny_model.sam.state_dict().items()}
    else:
        # Without a GPU, rewrite the storage location tag that torch.save records ("cpu" -> "cuda:0").
        state = tiny_model.sam.state_dict()
    path = tmp_path / "gpu.pth"
    torch.save(state, path)
    if not torch.cuda.is_available():
        _retag_storages_as_cuda(path)
    model = load_model(checkpoint=path, device="cpu")
    assert next(model.sam.parameters()).device.type == "cpu"


def _retag_storages_as_cuda(path: Path) -> None:
    """Rewrite a torch zip checkpoint's pickle so every storage claims location 'cuda:0'."""
    import zipfile

    with zipfile.ZipFile(path) as source:
        items = {name: source.read(name) for name in source.namelist()}
    pickle_name = next(n for n in items if n.endswith("data.pkl"))
    assert b"X\x03\x00\x00\x00cpu" in items[pickle_name]
    items[pickle_name] = items[pickle_name].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for name, data in items.items():
            target.writestr(name, data)
