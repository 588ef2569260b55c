"""The extension's metadata, checked the way the Slicer Extensions Index's checker does, offline.

The index's ``scripts/check_description_files.py`` parses the catalog entry, validates it against its
``$schema``, checks the category against its accepted list, the repository name (must contain
"slicer"), the SCM URL scheme, that the top-level CMakeLists.txt's ``project()`` equals the entry's file
name and sets http(s) icon and screenshot URLs, and that a license file sits at the root. Downloads
(schema, images, clone) are replaced by the files they would fetch from this repository.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A subset of the index's ACCEPTED_EXTENSION_CATEGORIES, enough for what this extension could claim.
ACCEPTED_CATEGORIES = {"Segmentation", "Registration", "Utilities", "Pipelines", "Analysis"}
SCHEMA_KEYS = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_url", "tier"}


def _cmake_set(content: str, name: str) -> str | None:
    found = re.findall(rf'set\s*\({name}\s*"([^"]*)"\s*\)', content, re.IGNORECASE)
    return found[0] if found else None


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads((ROOT / "SAMFusion.json").read_text())


@pytest.fixture(scope="module")
def cmake() -> str:
    return (ROOT / "CMakeLists.txt").read_text()


def test_catalog_entry_has_the_schema_fields_and_an_accepted_category(entry):
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1")
    assert set(entry) <= SCHEMA_KEYS and {"$schema", "scm_url", "scm_revision", "category", "build_dependencies", "tier"} <= set(entry)
    assert entry["category"] in ACCEPTED_CATEGORIES
    assert entry["tier"] in (1, 3, 5)
    url = urllib.parse.urlsplit(entry["scm_url"])
    assert url.scheme in ("https", "git")
    repository = Path(url.path).stem
    assert "slicer" in repository.lower(), repository


def test_cmake_project_matches_the_entry_and_its_urls_point_into_this_repository(entry, cmake):
    assert re.findall(r"project\s*\(\s*([^\s\)]+)", cmake, re.IGNORECASE)[0] == "SAMFusion" == (ROOT / "SAMFusion.json").stem
    repository = urllib.parse.urlsplit(entry["scm_url"]).path.removesuffix(".git").strip("/")
    assert _cmake_set(cmake, "EXTENSION_HOMEPAGE") == f"https://github.com/{repository}"
    icon = _cmake_set(cmake, "EXTENSION_ICONURL")
    screenshots = (_cmake_set(cmake, "EXTENSION_SCREENSHOTURLS") or "").split()
    assert icon and screenshots
    prefix = f"https://raw.githubusercontent.com/{repository}/{entry['scm_revision']}/"
    for url in [icon, *screenshots]:
        # What the checker would download: the file at that path in this repository, a real PNG.
        assert url.startswith(prefix), url
        local = ROOT / url.removeprefix(prefix)
        assert local.is_file() and local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url


def test_build_dependencies_match_extension_depends(entry, cmake):
    assert sorted(entry["build_dependencies"]) == sorted((_cmake_set(cmake, "EXTENSION_DEPENDS") or "").split())


def test_contributors_description_and_license(cmake):
    contributors = _cmake_set(cmake, "EXTENSION_CONTRIBUTORS")
    # The index's form: "Name (Organisation)", comma-separated.
    assert contributors and all(re.fullmatch(r"[^(),]+ \([^()]+\)", part.strip()) for part in contributors.split(","))
    description = _cmake_set(cmake, "EXTENSION_DESCRIPTION")
    assert description and 40 <= len(description) <= 300 and "not a medical device" in description
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    for attribution in ("LiteMedSAM", "CC BY 3.0", "CC BY 4.0", "TotalSegmentator"):
        assert attribution in license_text


def test_module_help_links_the_documentation_and_names_the_contributors():
    source = (ROOT / "SAMFusion" / "SAMFusion.py").read_text()
    assert "https://github.com/samfusion/SlicerSAMFusion#readme" in source
    assert 'contributors = ["SAMFusion developers (SAMFusion project)"]' in source


def test_every_embedded_model_file_is_packaged_with_the_extension():
    table = json.loads((ROOT / "Resources" / "models.json").read_text())
    cmake_lib = (ROOT / "SAMFusionLib" / "CMakeLists.txt").read_text()
    embedded = [row["embedded"] for row in table["models"] if row.get("embedded")]
    assert len(embedded) >= 2
    listed = re.search(r"set\(_engine_resources\s+([^)]*)\)", cmake_lib).group(1).split()
    assert set(embedded) <= set(listed), embedded
    assert {"models.json", "sample_data.json"} <= set(listed)
    assert all((ROOT / "Resources" / name).is_file() for name in listed)
    # Installed inside the engine's own folder, where resources_dir() looks first, never through "../".
    commands = "\n".join(line for line in cmake_lib.splitlines() if not line.lstrip().startswith("#"))
    assert "${MODULE_NAME}/Resources/${_subdir}" in commands and "../Resources" not in commands


def test_the_engine_finds_its_resources_where_the_extension_installs_them(tmp_path):
    """The install layout: qt-scripted-modules/SAMFusionLib/ with its Resources/ inside, and no
    top-level Resources/ beside it; the engine reads the model table from there."""
    import os
    import shutil
    import subprocess
    import sys

    installed = tmp_path / "qt-scripted-modules"
    shutil.copytree(ROOT / "SAMFusionLib", installed / "SAMFusionLib", ignore=shutil.ignore_patterns("__pycache__", "CMakeLists.txt"))
    (installed / "SAMFusionLib" / "Resources").mkdir()
    for name in ("models.json", "sample_data.json"):
        shutil.copy(ROOT / "Resources" / name, installed / "SAMFusionLib" / "Resources" / name)
    env = {k: v for k, v in os.environ.items() if k != "SAMFUSION_RESOURCES"}
    code = "from SAMFusionLib.sam.models import resources_dir, load_table; print(resources_dir()); print(load_table().default)"
    done = subprocess.run([sys.executable, "-c", code], cwd=installed, env={**env, "PYTHONPATH": str(installed)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found, default = done.stdout.split()
    assert Path(found) == installed / "SAMFusionLib" / "Resources"
    assert default == json.loads((ROOT / "Resources" / "models.json").read_text())["default"]
