"""Reading images and volumes, and writing masks without ever leaving a half-written file.

Everything is read through SimpleITK (PNG, JPEG, NRRD, NIfTI, DICOM files and series). Arrays
come back numpy-ordered: 2D images (rows, columns[, 3]); volumes (k, j, i).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.atomic import atomic_path, check_writable_folder, suffix_of
from SAMFusionLib.imaging.geometry import ImageGeometry

MASK_SUFFIXES = (".png", ".nrrd", ".nii", ".nii.gz", ".mha", ".mhd")
# The largest 2D image the commands accept. A radiograph is 2000-3000 px a side (4-9 MP); a 10000 px
# square (100 MP) needs several GB in segmentation and fusion, so it is refused rather than let to
# exhaust the machine's memory.
MAX_PIXELS_2D = 40_000_000


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


@contextmanager
def quiet_native_output():
    """ITK, GDCM, MetaIO and VTK print warnings and parse errors on their own, straight to file
    descriptor 2; our one error line says what matters, so their output is dropped while we read."""
    import sys
    import tempfile

    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _itk_reason(error: RuntimeError) -> str:
    """The reason in an ITK exception, without its source location and object address."""
    text = str(error).strip()
    for line in text.splitlines():
        if "ITK ERROR:" in line:
            reason = line.split("ITK ERROR:", 1)[1]
            return (reason.split("): ", 1)[1] if "): " in reason else reason).strip()[:160]
    return text.splitlines()[-1][:160] if text else "unreadable"


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Header + voxel bytes that a NIfTI-1 or NIfTI-2 header announces, or None if it is not one."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    voxels = int(np.prod([max(1, d) for d in dims[1 : dims[0] + 1]], dtype=np.int64))
    return max(offset, 348) + voxels * bitpix // 8


def _gzip_length(path: Path) -> int:
    """The decompressed length a gzip file records in its trailer (mod 2**32, of its last member)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        # ISIZE, the last 4 bytes, is the length mod 2**32 (of the last member): cheap, and checked
        # against the header's size below; only on a mismatch is the whole stream read.
        handle.seek(max(0, size - 4))
        trailer = handle.read(4)
    return struct.unpack("<I", trailer)[0] if len(trailer) == 4 else 0


def _check_not_truncated(path: Path) -> None:
    """A NIfTI file cut short reads as zeros in ITK without a complaint: compare with its header."""
    if suffix_of(path) not in (".nii", ".nii.gz"):
        return
    compressed = suffix_of(path) == ".nii.gz"
    try:
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as handle:
            expected = _nifti_expected_bytes(handle.read(544))
    except (OSError, EOFError, zlib.error):
        raise SamFusionError(f"cannot read image {path}: not a readable {'gzip' if compressed else 'NIfTI'} file") from None
    if expected is None:
        return
    if not compressed:
        actual = path.stat().st_size
    elif _gzip_length(path) == expected % 2**32:
        return
    else:
        actual = 0
        try:
            with gzip.open(path, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    actual += len(chunk)
        except (EOFError, zlib.error, OSError):
            raise SamFusionError(f"{path.name} is truncated: its compressed data end before the {expected} bytes its header announces") from None
    if actual < expected:
        raise SamFusionError(f"{path.name} is truncated: {actual} of the {expected} bytes its header announces")


def _read_sitk(path: Path, max_pixels: int | None = None):
    """Read a file or a DICOM series folder; ``max_pixels`` refuses a larger image from its header,
    before its pixels are read."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise SamFusionError(f"file not found: {path}")
    try:
        with quiet_native_output():
            if path.is_dir():
                if not any(child.is_file() for child in path.iterdir()):
                    raise SamFusionError(f"{path} is an empty folder, not an image or a DICOM series")
                reader = sitk.ImageSeriesReader()
                names = reader.GetGDCMSeriesFileNames(str(path))
                if not names:
                    raise SamFusionError(f"no DICOM series in folder {path}")
                reader.SetFileNames(names)
                return reader.Execute()
            _check_not_truncated(path)
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            if max_pixels is not None:
                reader.ReadImageInformation()
                size = (*reader.GetSize(), 1)  # a 1D file has one size
                if size[0] * size[1] > max_pixels:
                    raise SamFusionError(f"{path.name} has {size[0]}x{size[1]} pixels; images up to {max_pixels // 1_000_000} megapixels are supported")
            return reader.Execute()
    except RuntimeError as error:
        raise SamFusionError(f"cannot read image {path}: {_itk_reason(error)}") from None


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
    image = _read_sitk(path, MAX_PIXELS_2D)
    _check_components(image, path)
    dimension = image.GetDimension()
    if dimension > 3 or dimension < 2:
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


def read_volume_or_slice(path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """((k, j, i) float array, geometry) of a CT volume, or of a 2D image as one slice (the paper's
    case of a CT image)."""
    import SimpleITK as sitk

    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_native_output():
            reader.ReadImageInformation()
        flat = reader.GetDimension() == 2 or (reader.GetDimension() == 3 and reader.GetSize()[2] == 1)
    except RuntimeError:
        flat = False  # read_volume gives the one-line error
    if flat:
        image = read_image_2d(path)
        return grey_array(image)[None], image.geometry
    array, geometry, _ = read_volume(path)
    return array, geometry


def check_output_path(path: Path, suffixes: tuple[str, ...] = MASK_SUFFIXES) -> Path:
    """Validate an output path before any work is done: known suffix, an existing folder that can be
    written, and not a folder itself."""
    path = Path(path)
    if suffix_of(path) not in suffixes:
        raise SamFusionError(f"unsupported output type {path.name!r}; use one of {', '.join(suffixes)}")
    if not path.parent.resolve().is_dir():
        raise SamFusionError(f"output folder does not exist: {path.parent}")
    if path.is_dir():
        raise SamFusionError(f"output {path} is a folder")
    check_writable_folder(path.parent.resolve())
    return path


def check_distinct(outputs: Iterable[Path | None], inputs: Iterable[Path | None]) -> None:
    """Refuse an output that is one of the inputs (the same file, through links too) or another
    output: writing it would destroy what is being read."""
    def key(path: Path):
        path = Path(path)
        return (os.stat(path).st_dev, os.stat(path).st_ino) if path.exists() else ("new", str(path.resolve()))

    seen = {key(p): Path(p) for p in inputs if p is not None}
    for output in (p for p in outputs if p is not None):
        other = seen.get(key(output))
        if other is not None:
            raise SamFusionError(f"output {output} is the same file as {other}; choose another output name")
        seen[key(output)] = Path(output)


def check_out_folder(path: Path) -> Path:
    """Validate an output folder before any work: a folder (or nothing yet) in an existing folder,
    where new files can be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SamFusionError(f"--out {path} exists and is not a folder")
    if not path.resolve().parent.is_dir():
        raise SamFusionError(f"the folder that should hold {path} does not exist: {path.resolve().parent}")
    check_writable_folder(path.resolve().parent)
    if path.exists():
        check_writable_folder(path)
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
    with atomic_path(path, suffix_of(path)) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def write_mask_2d(mask: np.ndarray, path: Path, reference=None) -> None:
    """Write an (H, W) bool mask: PNG as 0/255; NRRD/NIfTI/MHA as 0/1 with ``reference``'s geometry."""
    import SimpleITK as sitk

    path = check_output_path(path)
    binary = np.asarray(mask, dtype=bool)
    if suffix_of(path) == ".png":
        image = sitk.GetImageFromArray(binary.astype(np.uint8) * 255)
    else:
        image = sitk.GetImageFromArray(binary.astype(np.uint8))
        if reference is not None:
            image.CopyInformation(reference)
    atomic_write_image(image, path)

