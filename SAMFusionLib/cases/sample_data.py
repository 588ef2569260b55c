"""The sample data set the Slicer module registers: the default case's CT and X-ray as files.

The files are generated (``write_sample_files``), never downloaded from elsewhere: they are the
embedded default case of ``samfusion run``. Their SHA256 are pinned in
``Resources/sample_data.json``, which also holds the release URLs from which Slicer's Sample Data
module fetches them; a test regenerates them and checks the pins, so the published files and the
code cannot drift apart. Written uncompressed, so the bytes depend only on the voxels.
"""

from __future__ import annotations

import json
from pathlib import Path

from SAMFusionLib.sam.models import resources_dir

SAMPLE_TABLE = "sample_data.json"


def sample_table() -> dict:
    return json.loads((resources_dir() / SAMPLE_TABLE).read_text())


def write_sample_files(folder: Path) -> dict[str, Path]:
    """Write the default case's CT (3D) and X-ray (2D) as NRRD; returns {node name: path}."""
    import numpy as np
    import SimpleITK as sitk

    from SAMFusionLib.cases.demo_case import make_demo_case
    from SAMFusionLib.imaging.io import sitk_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    case = make_demo_case()
    inputs = case.inputs
    written = {}
    for name, array, geometry in (
        ("SAMFusionPhantomCT", inputs.ct_kji.astype(np.int16), inputs.ct_geometry),
        ("SAMFusionPhantomXray", inputs.xray[None].astype(np.float32), inputs.xray_plane.geometry()),
    ):
        image = sitk_image(array, geometry)
        path = folder / f"{name}.nrrd"
        sitk.WriteImage(image, str(path), useCompression=False)
        written[name] = path
    return written
