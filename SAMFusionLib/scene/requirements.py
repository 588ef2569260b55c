"""What the Slicer module installs on first use, and what it must never replace.

Slicer ships its own numpy, vtk, SimpleITK and friends; an unpinned ``pip install`` of, say,
opencv-python-headless would pull numpy >= 2 and uninstall Slicer's numpy 1.26 (Slicer 5.8). So
every install runs under a constraints file that pins each protected package to the version that
is installed, and torch / torchvision come only from the PyTorch extension (PyTorchUtils), which
picks the build for the user's GPU driver. Pure functions: the module calls them and passes the
result to ``slicer.util.pip_install``; nothing here imports ``slicer``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from SAMFusionLib.errors import SamFusionError

# Packages that Slicer (or PyTorchUtils) owns: never upgraded, downgraded or removed by our installs.
PROTECTED = ("numpy", "vtk", "SimpleITK", "scipy", "Pillow", "pydicom", "requests", "packaging", "torch", "torchvision")
# The oldest torch / torchvision the engine runs on (segment-anything needs torchvision; bf16 autocast torch 2).
TORCH_REQUIREMENT = ">=2.0"
TORCHVISION_REQUIREMENT = ">=0.15"


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of ``path`` that apply to this Python (markers evaluated), without markers."""
    from packaging.requirements import InvalidRequirement, Requirement

    lines = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise SamFusionError(f"{path}:{number}: not a requirement ({error})") from None
        if requirement.marker is None or requirement.marker.evaluate():
            lines.append(f"{requirement.name}{requirement.specifier}")
    return lines


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(requirements: list[str]) -> list[str]:
    """The requirements that are not installed, or installed in a version outside their specifier."""
    from packaging.requirements import Requirement

    result = []
    for line in requirements:
        requirement = Requirement(line)
        version = _installed(requirement.name)
        if version is None or (requirement.specifier and not requirement.specifier.contains(version, prereleases=True)):
            result.append(line)
    return result


def protected_in(requirements: list[str], protected: tuple[str, ...] = PROTECTED) -> list[str]:
    """Requirements that name a protected package (a packaging mistake: they must not be pip-installed)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names = {canonicalize_name(name) for name in protected}
    return [line for line in requirements if canonicalize_name(Requirement(line).name) in names]


def constraints(protected: tuple[str, ...] = PROTECTED) -> str:
    """A pip constraints file's text pinning every installed protected package to its version."""
    pins = [f"{name}=={version}" for name in protected if (version := _installed(name)) is not None]
    return "\n".join(pins) + "\n"


def torch_status() -> str | None:
    """None when torch and torchvision meet the engine's minimum, else what is wrong (one line)."""
    from packaging.specifiers import SpecifierSet

    for name, requirement in (("torch", TORCH_REQUIREMENT), ("torchvision", TORCHVISION_REQUIREMENT)):
        version = _installed(name)
        if version is None:
            return f"{name} is not installed"
        if not SpecifierSet(requirement).contains(version.split("+")[0], prereleases=True):
            return f"{name} {version} is installed; SAMFusion needs {name}{requirement}"
    return None


def pip_arguments(requirements: list[str], constraints_file: Path) -> list[str]:
    """The arguments for ``slicer.util.pip_install`` (a list, so a path with spaces stays one argument)."""
    bad = protected_in(requirements)
    if bad:
        raise SamFusionError(f"requirements name packages that Slicer owns and must not be replaced: {', '.join(bad)}")
    return [*requirements, "-c", str(constraints_file)]
