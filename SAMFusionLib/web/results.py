"""What the web page shows: a run's figures (from ``report.json``), the run's folder as one zip, and
a user action's error as the page's one-line message."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from SAMFusionLib.errors import SamFusionError

ROW_NAMES = {"reference": "registered on", "confirmed_by": "confirmed by", "confirmation_distance_mm": "distance to the boxes' result (mm)", "match_loss_before": "Match_Loss before", "match_loss_after": "Match_Loss after",
             "dice_before": "mask Dice before", "dice_after": "mask Dice after", "prompt_distance_mm": "prompt distance (mm)"}


def report_rows(report: dict) -> list[dict]:
    """The figures the page lists, as (name, value) rows, from ``report.json``'s content."""
    registration, rows = report["registration"], []
    for key in ("reference", "confirmed_by", "confirmation_distance_mm", "match_loss_before", "match_loss_after", "dice_before", "dice_after", "prompt_distance_mm"):
        if registration.get(key) is not None:
            value = registration[key]
            text = ("no overlap" if value == float("inf") else f"{value:.4f}") if isinstance(value, float) else str(value)
            rows.append({"name": ROW_NAMES.get(key, key), "value": text})
    rows.append({"name": "CT mask voxels", "value": str(report["ct"]["mask_voxels"])})
    rows.append({"name": "X-ray mask pixels", "value": str(report["xray"]["mask_pixels"])})
    rows.append({"name": "CT slices: SAM / interpolated", "value": f"{report['ct']['slices_segmented']} / {report['ct']['slices_interpolated']}"})
    if report["ct"].get("slice_step") is not None:  # "auto" resolved: the step the run used
        rows.append({"name": "CT slice step", "value": str(report["ct"]["slice_step"])})
    rows.append({"name": "images encoded in the run", "value": str(report["images_encoded"])})
    rows.append({"name": "pipeline seconds", "value": f"{report['total_s']:.1f}"})
    rows.append({"name": "model", "value": report["model"]["id"]})
    return rows


def zip_folder(folder: Path) -> bytes:
    """The folder and everything in it as one zip archive (the page's Download), paths under its name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


class ErrorsToPage:
    """Any error of a user action becomes the page's one-line message; the scene is as it was."""

    def __init__(self, app) -> None:
        self.app = app

    def __enter__(self):
        self.app.state.sf_message = ""
        return self

    def __exit__(self, error_type, error, traceback):
        if error_type is None:
            return False
        if issubclass(error_type, SamFusionError):
            message = str(error)
        elif issubclass(error_type, Exception):
            message = f"{error_type.__name__}: {error}"
        else:
            return False
        self.app.state.sf_message = message.splitlines()[0] if message else error_type.__name__
        self.app.state.sf_scene = self.app._scene_summary()
        return True
