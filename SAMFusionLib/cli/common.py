"""What every ``samfusion`` command shares: exit codes, the one-line-error parser, prompt pairs and
the model options.

The command modules import this one, never each other or ``main`` (which imports them all).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError

EXIT_SOME_FILES_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_QUALITY_FAILED = 3
EXIT_CANCELLED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that staged outputs are cleaned up as for Ctrl-C."""


# argparse takes "-1e-05" or "-inf" for an option (its own pattern knows only "-3" and "-3.5"), so
# "--point -1e-05 4" failed with "unrecognized arguments": every number is a value here.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line like every other error, and negative numbers in any
    notation are values."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> None:  # noqa: D401 - argparse's API
        raise SamFusionError(message)


def pairs(values: list[list[str]] | None, what: str) -> np.ndarray | None:
    """Flatten ``--point X Y [X Y ...]`` (repeatable) into an (N, 2) float array."""
    if not values:
        return None
    numbers = [v for group in values for v in group]
    if len(numbers) % 2:
        raise SamFusionError(f"{what} needs pairs of numbers X Y")
    try:
        return np.array(numbers, dtype=float).reshape(-1, 2)
    except ValueError:
        raise SamFusionError(f"{what} coordinates must be numbers") from None


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", help="model id from the model table (default: the table's default, fine-tuned LiteMedSAM)")
    group.add_argument("--checkpoint", type=Path, help="a SAM checkpoint file to use directly (offline import)")
    parser.add_argument("--arch", help="architecture of --checkpoint (inferred from its shapes when omitted)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda or mps")


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-embedding-cache", action="store_true",
                        help="do not keep image embeddings on disk (by default they are kept in the cache folder, "
                             "bounded by $SAMFUSION_EMBEDDING_CACHE_MB, so an image seen before is not encoded again)")


def segmenter_from_args(args, model):
    """A ``Segmenter`` for ``model``: with the persistent embedding cache unless ``--no-embedding-cache``."""
    from SAMFusionLib.sam.segmenter import Segmenter, disk_cached_segmenter

    return Segmenter(model) if args.no_embedding_cache else disk_cached_segmenter(model)


def load_model_from_args(args):
    """The ``LoadedModel`` that ``--model`` / ``--checkpoint`` / ``--arch`` / ``--device`` name."""
    from SAMFusionLib.sam.models import load_model

    if args.arch and args.checkpoint is None:
        raise SamFusionError("--arch applies only with --checkpoint")
    return load_model(args.model, args.checkpoint, args.arch, args.device)


def holding_out_folder(command):
    """Run a command that writes the folder ``args.out`` while holding that folder's lock: a second
    command aimed at the same folder meanwhile is refused with one line instead of mixing outputs."""
    from SAMFusionLib.imaging.atomic import locked_folder
    from SAMFusionLib.imaging.io import check_out_folder

    @functools.wraps(command)
    def run(args) -> int:
        check_out_folder(args.out)
        with locked_folder(args.out):
            return command(args)

    return run


def process_seconds() -> float | None:
    """Seconds since this process started (interpreter start-up and imports included): what a user
    waits for a command. From /proc on Linux; None where that is not available."""
    import os

    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 2)


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """The pipeline's options, as ``samfusion run`` and ``run-batch`` take them."""
    parser.add_argument("--transform", default="nonrigid", help="rigid, similarity, affine or nonrigid (default)")
    parser.add_argument("--view", default="AP", help="projection view of a 3D CT: AP (default), LAT or SI")
    parser.add_argument("--projection", choices=["parallel", "perspective"], default="parallel",
                     help="DRR geometry: parallel rays (default) or a point source and a flat detector")
    parser.add_argument("--source-distance", type=float, default=1000.0, help="perspective: source to the CT's centre (mm)")
    parser.add_argument("--detector-distance", type=float, default=1500.0, help="perspective: source to the detector (mm)")
    parser.add_argument("--levels", type=int, default=3, help="fusion pyramid levels (default 3)")
    parser.add_argument("--slice-step", type=slice_step_arg, default="auto", metavar="N|auto",
                        help="run SAM on every Nth CT slice and interpolate the others; default auto: SAM's slices about 3 mm "
                             "apart (every slice of a CT of 3 mm slices or more, every second of 1.5 mm ones); 1: every slice")
    parser.add_argument("--no-box-fallback", action="store_true",
                        help="report a registration on SAM's masks that fails as failed, without retrying on the prompt boxes "
                             "(whose result can also confirm one that missed only the mask Dice threshold)")


def slice_step_arg(text: str):
    """``--slice-step``'s value: "auto", or a whole number (``volume.check_slice_step`` checks its range)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"auto or a whole number of slices, got {text!r}") from None


def pipeline_options(args):
    """The ``PipelineOptions`` of ``add_pipeline_options``' arguments."""
    from SAMFusionLib.pipeline import PipelineOptions
    from SAMFusionLib.registration.register import RegistrationOptions
    from SAMFusionLib.sam.volume import check_slice_step

    check_slice_step(args.slice_step)  # before the model loads: a bad value fails at once
    return PipelineOptions(view=args.view, projection=args.projection, source_to_centre_mm=args.source_distance,
                           source_to_detector_mm=args.detector_distance, fusion_levels=args.levels, slice_step=args.slice_step,
                           registration=RegistrationOptions(transform=args.transform), box_fallback=not args.no_box_fallback)


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` (a local Dask cluster) or ``--scheduler ADDRESS`` (a running one); neither: serial."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, metavar="N", help="run on a local Dask cluster of N worker processes (one task per item)")
    group.add_argument("--scheduler", metavar="ADDRESS", help="run on a running Dask cluster, e.g. tcp://10.0.0.5:8786")


@contextlib.contextmanager
def dask_client(args, command: str, segmenter: bool = True):
    """A Dask client for ``--workers`` / ``--scheduler``, with the model's segmenter on every worker
    when ``segmenter``; on success prints the workers' peak memory; always closes what it started."""
    from SAMFusionLib.batch import cluster

    if segmenter and args.arch and args.checkpoint is None:
        raise SamFusionError("--arch applies only with --checkpoint")
    client = cluster.client_for(args.workers, args.scheduler)
    try:
        if segmenter:
            cluster.register_segmenter(client, args.model, args.checkpoint and args.checkpoint.resolve(), args.arch, args.device)
        yield client
        peaks = cluster.worker_peak_rss_mb(client)
        print(f"samfusion {command}: {len(peaks)} Dask workers, peak RSS per worker {', '.join(f'{v:.0f}' for v in sorted(peaks.values()))} MB")
    finally:
        cluster.close(client)
