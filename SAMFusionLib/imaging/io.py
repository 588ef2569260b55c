"""Reading images and volumes, and writing masks without ever leaving a half-written file.

Everything is read through SimpleITK (PNG, JPEG, NRRD, NIfTI, DICOM files and series). Arrays
come back numpy-ordered: 2D images (rows, columns[, 3]); volumes (k, j, i).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.atomic import atomic_path
from SAMFusionLib.imaging.geometry import ImageGeometry

MASK_SUFFIXES = (".png", ".nrrd", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass
class Image2D:
    """A 2D image. ``array`` is (H, W) grey or (H, W, 3) RGB; ``reference`` keeps the SimpleITK geometry."""

    array: np.ndarray
    geometry: ImageGeometry
    reference: object


def grey_array(image: Image2D) -> np.ndarray:
    """(H, W) float32 of a 2D image; RGB becomes luminance (ITU-R BT.601)."""
    array = image.array.astype(np.float32)
    return array @ np.array([0.299, 0.587, 0.114], np.float32) if array.ndim == 3 else array


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _read_sitk(path: Path):
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise SamFusionError(f"file not found: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            names = reader.GetGDCMSeriesFileNames(str(path))
            if not names:
                raise SamFusionError(f"no DICOM series in folder {path}")
            reader.SetFileNames(names)
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[-1][:160] if str(error).strip() else "unreadable"
        raise SamFusionError(f"cannot read image {path}: {detail}") from None


def _geometry_3d(image) -> ImageGeometry:
    """ImageGeometry of a 2D or 3D SimpleITK image; a 2D image becomes one slice at k = 0."""
    size = image.GetSize()
    if image.GetDimension() == 2:
        direction = np.eye(3)
        direction[:2, :2] = np.asarray(image.GetDirection()).reshape(2, 2)
        return ImageGeometry.from_lps((*image.GetSpacing(), 1.0), (*image.GetOrigin(), 0.0), direction, (1, size[1], size[0]))
    return ImageGeometry.from_lps(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), (size[2], size[1], size[0]))


def _check_components(image, path: Path) -> None:
    components = image.GetNumberOfComponentsPerPixel()
    if components == 4:
        raise SamFusionError(f"{path.name} is RGBA; save it as grey or RGB without an alpha channel")
    if components not in (1, 3):
        raise SamFusionError(f"{path.name} has {components} channels per pixel; expected grey or RGB")


def read_image_2d(path: Path) -> Image2D:
    """Read a 2D image; a 3D file with exactly one slice counts as 2D."""
    import SimpleITK as sitk

    path = Path(path)
    image = _read_sitk(path)
    _check_components(image, path)
    dimension = image.GetDimension()
    if dimension > 3:
        raise SamFusionError(f"{path.name} is {dimension}D; expected a 2D image")
    if dimension == 3:
        if image.GetSize()[2] != 1:
            raise SamFusionError(f"{path.name} is a volume of {image.GetSize()[2]} slices; expected a 2D image")
        geometry = _geometry_3d(image)
        image = image[:, :, 0]
    else:
        geometry = _geometry_3d(image)
    array = sitk.GetArrayFromImage(image)
    return Image2D(array, geometry, image)


def read_volume(path: Path) -> tuple[np.ndarray, ImageGeometry, object]:
    """Read a scalar 3D volume: ((k, j, i) array, geometry, SimpleITK image)."""
    import SimpleITK as sitk

    path = Path(path)
    image = _read_sitk(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SamFusionError(f"{path.name} is not a scalar volume ({image.GetNumberOfComponentsPerPixel()} channels)")
    if image.GetDimension() != 3:
        raise SamFusionError(f"{path.name} is {image.GetDimension()}D; expected a 3D volume")
    return sitk.GetArrayFromImage(image), _geometry_3d(image), image


def check_output_path(path: Path, suffixes: tuple[str, ...] = MASK_SUFFIXES) -> Path:
    """Validate an output path before any work is done: known suffix, existing folder."""
    path = Path(path)
    if _suffix(path) not in suffixes:
        raise SamFusionError(f"unsupported output type {path.name!r}; use one of {', '.join(suffixes)}")
    if not path.parent.resolve().is_dir():
        raise SamFusionError(f"output folder does not exist: {path.parent}")
    return path


def check_out_folder(path: Path) -> Path:
    """Validate an output folder before any work: a folder (or nothing yet) in an existing folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SamFusionError(f"--out {path} exists and is not a folder")
    if not path.resolve().parent.is_dir():
        raise SamFusionError(f"the folder that should hold {path} does not exist: {path.resolve().parent}")
    return path


def sitk_image(array_kji: np.ndarray, geometry: ImageGeometry):
    """A SimpleITK image of a (k, j, i) array with ``geometry`` (converted to ITK's LPS here)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    spacing, origin, direction = geometry.to_lps()
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection([float(v) for v in direction])
    return image


def atomic_write_image(image, path: Path) -> None:
    """Write a SimpleITK image to a temporary file beside ``path``, then rename it into place."""
    import SimpleITK as sitk

    path = Path(path)
    with atomic_path(path, _suffix(path)) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def write_mask_2d(mask: np.ndarray, path: Path, reference=None) -> None:
    """Write an (H, W) bool mask: PNG as 0/255; NRRD/NIfTI/MHA as 0/1 with ``reference``'s geometry."""
    import SimpleITK as sitk

    path = check_output_path(path)
    binary = np.asarray(mask, dtype=bool)
    if _suffix(path) == ".png":
        image = sitk.GetImageFromArray(binary.astype(np.uint8) * 255)
    else:
        image = sitk.GetImageFromArray(binary.astype(np.uint8))
        if reference is not None:
            image.CopyInformation(reference)
    atomic_write_image(image, path)

