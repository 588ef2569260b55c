"""What the web app accepts from a browser, and the only files of the server it opens.

- Uploads: a CT (one NIfTI/NRRD/MetaImage file, or the files of one DICOM series) and an X-ray
  (PNG/JPEG/NRRD/DICOM), each below ``max_bytes``, with a plain file name (no folder part, no
  ``..``, no hidden or control characters) and a known suffix. They are written into the session's
  own temporary folder, one fresh sub-folder per upload, never anywhere a client names.
- ``--data DIR``: the files under DIR that the app may load, listed by the server; a client sends
  back one of those relative names, and a name that resolves (links too) outside DIR is refused.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from SAMFusionLib.errors import SamFusionError

CT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".dcm")
XRAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".nrrd", ".nii", ".nii.gz", ".mha", ".dcm")
MAX_UPLOAD_BYTES = 1 << 30  # 1 GiB: a thin-slice CT as one file
MAX_LISTED_FILES = 2000
_PLAIN_NAME = re.compile(r"^[^\x00-\x1f/\\:*?\"<>|]+$")


@dataclass(frozen=True)
class Upload:
    """One file as the browser sent it."""

    name: str
    content: bytes


def suffix_of(name: str) -> str:
    lower = name.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else Path(lower).suffix


def check_name(name: str, allowed: tuple[str, ...]) -> str:
    """The upload's file name if it is a plain name with an allowed suffix; else a one-line error."""
    if not name or name in (".", "..") or name.startswith(".") or not _PLAIN_NAME.match(name) or Path(name).name != name:
        raise SamFusionError(f"refused upload name {name!r}: a plain file name is needed, without folders")
    if suffix_of(name) not in allowed:
        raise SamFusionError(f"{name}: not an accepted file type ({', '.join(allowed)})")
    return name


def write_uploads(uploads: list[Upload], allowed: tuple[str, ...], session_folder: Path, max_bytes: int = MAX_UPLOAD_BYTES) -> list[Path]:
    """Check every upload first, then write them all into a new sub-folder of ``session_folder``.

    Several files are one DICOM series (all ``.dcm``); returns the written paths.
    """
    if not uploads:
        raise SamFusionError("no file was uploaded")
    names = [check_name(upload.name, allowed) for upload in uploads]
    if len(set(names)) != len(names):
        raise SamFusionError("two uploaded files have the same name")
    if len(uploads) > 1 and any(suffix_of(name) != ".dcm" for name in names):
        raise SamFusionError("several files are accepted only as one DICOM series (.dcm files)")
    for upload in uploads:
        if len(upload.content) > max_bytes:
            raise SamFusionError(f"{upload.name}: {len(upload.content) / 2**20:.0f} MiB is over the {max_bytes / 2**20:.0f} MiB upload limit")
        if not upload.content:
            raise SamFusionError(f"{upload.name}: the file is empty")
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=session_folder))
    paths = []
    for name, upload in zip(names, uploads):
        path = folder / name
        path.write_bytes(upload.content)
        paths.append(path)
    return paths


def series_path(paths: list[Path]) -> Path:
    """What the readers take: a single file, or the folder of a DICOM series."""
    return paths[0] if len(paths) == 1 else paths[0].parent


def data_choices(data_dir: Path | None, allowed: tuple[str, ...]) -> list[str]:
    """Files under ``data_dir`` with an allowed suffix, as sorted names relative to it (at most
    ``MAX_LISTED_FILES``); DICOM series are offered as their folders."""
    if data_dir is None:
        return []
    root = Path(data_dir).resolve()
    found: set[str] = set()
    for path in sorted(root.rglob("*")):
        if len(found) >= MAX_LISTED_FILES:
            break
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            if suffix_of(path.name) not in allowed:
                continue
            chosen = path.parent if suffix_of(path.name) == ".dcm" else path
            if chosen.resolve().is_relative_to(root):
                found.add(chosen.relative_to(root).as_posix() or ".")
    return sorted(found)


def resolve_data_path(data_dir: Path | None, relative: str) -> Path:
    """The server path of a name from ``data_choices``; refused when there is no ``--data`` folder
    or when it resolves (through ``..`` or links) outside it."""
    if data_dir is None:
        raise SamFusionError("this server was started without --data: upload the files instead")
    root = Path(data_dir).resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or Path(relative).is_absolute():
        raise SamFusionError(f"refused path {relative!r}: outside the server's data folder")
    if not candidate.exists():
        raise SamFusionError(f"{relative}: not found in the server's data folder")
    return candidate
